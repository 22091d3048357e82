"""Error types that map to the CLI's exit codes (2: bad input, 1: runtime failure)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (suite file, policy name, budget, model or data path).

    The message must name the offending file/key and say how to fix it. The CLI exits with code 2.
    """

    exit_code = 2


class ConfigError(UserError):
    """A policy, scorer or allocator parameter is invalid (wrong type, out of range)."""
