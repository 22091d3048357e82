"""The repository's top-level folders never shadow installed packages, wherever Python starts.

``kernels/`` and ``policies/`` install as ``lukv_bench.kernels`` / ``lukv_bench.policies``. Started from
the repository root (``python -m pytest``, a script, a notebook, a Ray worker), the root is on
``sys.path`` before site-packages: a regular ``kernels`` package there would shadow Hugging Face's
``kernels``, which transformers imports while loading a model. ``kernels/`` is therefore a namespace
folder (no ``__init__.py``): a regular package of that name anywhere on the path always wins, and
transformers treats a bare namespace portion as "not installed".
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import ROOT, TINY

pytestmark = pytest.mark.slow  # runs subprocesses: not part of tests/unit

PROBE = """
import importlib.util, json, sys
import kernels
from transformers.utils.import_utils import is_kernels_available
from lukv_bench.kernels.ops import compact
from lukv_bench.runtime.models import load_model
lm = load_model(sys.argv[1])
print(json.dumps({"file": getattr(kernels, "__file__", None), "path": list(getattr(kernels, "__path__", [])),
                  "transformers_uses": is_kernels_available(), "loaded": lm.model.config.model_type}))
"""


def _run_in_root(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_kernels_folder_is_not_a_regular_package() -> None:
    assert not (ROOT / "kernels" / "__init__.py").exists()


def test_bare_kernels_import_from_the_root_never_is_ours() -> None:
    import json

    res = _run_in_root("-c", PROBE, TINY)
    assert res.returncode == 0, res.stderr[-2000:]
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    ours = str(ROOT / "kernels")
    assert seen["loaded"] == "llama"
    if seen["file"] is not None:  # Hugging Face's kernels is installed: it wins
        assert not seen["file"].startswith(ours), seen
    else:  # not installed: a namespace portion, which transformers does not take for Hugging Face's kernels
        assert seen["path"] == [ours] and seen["transformers_uses"] is False, seen


def test_python_m_pytest_collects_from_the_root() -> None:
    res = _run_in_root("-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                       "tests/unit/test_kernels_reference.py")
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    assert "error" not in res.stdout.lower(), res.stdout[-2000:]
