"""The policies whose per-layer allocations the profile compares: uniform first, then the layer-adaptive ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lukv_bench.registry import list_policies, resolve_policy
from lukv_bench.runtime.contract import is_layer_adaptive

UNIFORM_LABEL = "uniform"


@dataclass
class AllocationPolicy:
    """A resolved policy whose per-layer allocation is compared, and its label in tables and plots."""

    label: str
    policy: Any

    @property
    def needs(self) -> frozenset[str]:
        """Statistics the policy needs from the capture."""
        return self.policy.needs


def allocation_policies() -> list[AllocationPolicy]:
    """Uniform (SnapKV's allocation) first, then every registered policy whose allocator is layer-adaptive."""
    out = [AllocationPolicy(UNIFORM_LABEL, resolve_policy("snapkv"))]
    for p in list_policies():
        policy = resolve_policy(p["name"])
        if is_layer_adaptive(policy.allocator):
            out.append(AllocationPolicy(p["name"], policy))
    return out
