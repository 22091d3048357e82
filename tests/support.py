"""Helpers the tests share (imported as ``support``: the tests folder is on ``sys.path``)."""

from __future__ import annotations

import os
from pathlib import Path

#: the tiny random test model as a model folder (written once per test session by conftest.py)
TINY = os.environ["LUKV_TEST_TINY"]
#: the repository's root folder
ROOT = Path(__file__).resolve().parents[1]
