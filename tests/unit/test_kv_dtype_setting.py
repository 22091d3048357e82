"""The ``kv_dtype`` suite key: validated, recorded in the settings digest only when set."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lukv_bench.config.suite import SuiteError, load_suite
from lukv_bench.records import run_settings, setting_digest, suite_differences

SUITE = """\
name: half
model: embedded
policies: [full, snapkv]
budgets: [0.2]
tasks:
  - {name: lb, type: longbench, subsets: [qasper], source: auto}
"""


def _load(tmp_path: Path, extra: str = ""):
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(SUITE + extra))
    return load_suite(path)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_kv_dtype_changes_the_digest_only_when_set(tmp_path: Path, dtype: str) -> None:
    plain = _load(tmp_path)
    half = _load(tmp_path, f"kv_dtype: {dtype}\n")
    assert plain.kv_dtype is None and half.kv_dtype == dtype
    assert "kv_dtype" not in run_settings(plain.to_dict())  # unset: the digest of every existing record
    assert run_settings(half.to_dict())["kv_dtype"] == dtype
    task, policy = {"name": "lb"}, {"scorer": "snapkv"}
    before = {k: plain.to_dict()[k] for k in plain.to_dict() if k != "kv_dtype"}  # a run.json from before the key
    assert setting_digest(run_settings(before), task, policy) == setting_digest(run_settings(plain.to_dict()), task,
                                                                                policy)
    assert setting_digest(run_settings(half.to_dict()), task, policy) != setting_digest(
        run_settings(plain.to_dict()), task, policy)
    assert suite_differences(before, plain.to_dict()) == []
    assert suite_differences(plain.to_dict(), half.to_dict()) == [f'kv_dtype: null -> "{dtype}"']


def test_bad_kv_dtype_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(SuiteError) as info:
        _load(tmp_path, "kv_dtype: int8\n")
    assert info.value.exit_code == 2
    assert ":7: kv_dtype" in str(info.value) and "float16" in str(info.value)
