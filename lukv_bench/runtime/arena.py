"""K/V buffers reused by the compressed caches of successive samples (:class:`BufferArena`).

A sweep builds one batched cache per sample: per layer, a K and a V buffer for every cell's kept
tokens plus headroom (~1.5 GB at 2,000 tokens with 33 settings on the embedded model). Fresh buffers
cost their page faults every time (the kernel zeroes each page on first touch; slower still in a
VM); an arena keeps each layer's buffers after the cache that used them is gone and lends them to
the next cache, zeroed with a plain memset. Each layer's buffer is as large as the largest cache
seen so far; a larger one replaces it (the old one freed first).

A buffer is lent again only once every view lent from it is gone (weak references): a cache still
alive when the next one is built (a caller that keeps it) makes the new one fall back to fresh
buffers, so two live caches never share memory. Contents are exactly what fresh ``torch.zeros``
buffers would hold, so the results do not change.

Memory: the buffers stay resident between caches, so a process-RSS measurement (CPU
:class:`~lukv_bench.runtime.memory.PeakMemory`) would count them in everything that runs after the
largest sample. :meth:`BufferArena.idle_bytes` is what the arena holds beyond the views it has lent
out; ``PeakMemory(idle=...)`` subtracts it, so a peak reads what it would without an arena. Meant
for CPU, where fresh memory costs page faults; CUDA's caching allocator already reuses freed blocks.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import torch


@dataclass
class _Slot:
    """One layer's buffers and the views currently lent from them."""

    k: torch.Tensor  #: flat [capacity]
    v: torch.Tensor
    lent: list[weakref.ref] = field(default_factory=list)

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    def lent_bytes(self) -> int:
        total = 0
        for ref in self.lent:
            t = ref()
            if t is not None:
                total += t.numel() * t.element_size()
        return total

    def busy(self) -> bool:
        return any(ref() is not None for ref in self.lent)


class BufferArena:
    """Per-layer flat K/V buffers lent to one cache at a time; see the module docstring."""

    def __init__(self) -> None:
        self._slots: dict[int, _Slot] = {}
        self._lock = threading.Lock()  # a PeakMemory sampler thread reads idle_bytes() concurrently
        self.reused = 0  #: buffers (K and V of a layer) lent from memory already held
        self.grown = 0  #: buffers allocated because none was held or the held one was too small
        self.fresh = 0  #: buffers allocated outside the arena because the held one was still lent

    def take(self, layer: int, rows: int, D: int, dtype: torch.dtype,
             device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-filled K and V of [rows, D] for layer ``layer`` (the ``alloc`` of ``RaggedStore.empty``)."""
        n = rows * D
        slot = self._slots.get(layer)
        if n == 0 or (slot is not None and slot.busy()):
            if n:
                self.fresh += 1
            k = torch.zeros(rows, D, dtype=dtype, device=device)
            return k, torch.zeros_like(k)
        if slot is None or slot.k.numel() < n or slot.k.dtype != dtype or slot.k.device != torch.device(device):
            with self._lock:
                self._slots.pop(layer, None)  # free the old buffers before faulting in the larger ones
            slot = None
            flat = torch.zeros(n, dtype=dtype, device=device)
            slot = _Slot(flat, torch.zeros_like(flat))
            k, v = slot.k.view(rows, D), slot.v.view(rows, D)
            self.grown += 1
        else:
            k, v = slot.k[:n].view(rows, D), slot.v[:n].view(rows, D)
            k.zero_()
            v.zero_()
            self.reused += 1
        with self._lock:
            slot.lent = [weakref.ref(k), weakref.ref(v)]
            self._slots[layer] = slot
        return k, v

    def nbytes(self) -> int:
        """Bytes of every buffer the arena holds (resident: they were zero-filled when allocated)."""
        with self._lock:
            return sum(s.nbytes() for s in self._slots.values())

    def idle_bytes(self) -> int:
        """Bytes held but not lent to a live cache: what the process would not hold without the arena."""
        with self._lock:
            return sum(s.nbytes() - s.lent_bytes() for s in self._slots.values())

    def release(self) -> None:
        """Drop every buffer (memory still lent stays with the caches that hold it, until they go)."""
        with self._lock:
            self._slots.clear()
