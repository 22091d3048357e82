"""The package list in pyproject.toml installs every package of the source tree (a missing one only shows in a
wheel: editable installs and the tests in the checkout would still pass)."""

from __future__ import annotations

import tomllib
from support import ROOT


def test_every_package_is_installed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "lukv_bench").rglob("__init__.py")}
    found |= set(config["package-dir"])  # policies/ and kernels/, installed under lukv_bench
    assert listed == found
