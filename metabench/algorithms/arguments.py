"""The learners' argument checks in one place: each bad value raises the one-line
``algo.<key>=<value> must be ...`` ValueError that the CLI prints before any work."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float))


def _integer(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int)


#: what a value must be -> the test it must pass
RULES: dict[str, Callable[[Any], bool]] = {
    "a positive number": lambda v: _number(v) and v > 0,
    "a non-negative number": lambda v: _number(v) and v >= 0,
    "a positive integer": lambda v: _integer(v) and v >= 1,
    "a non-negative integer": lambda v: _integer(v) and v >= 0,
    "true or false": lambda v: isinstance(v, bool),
}


def require(rule: str, **values: Any) -> None:
    """Raise for the first of ``values`` (algo key -> value) that is not ``rule``."""
    ok = RULES[rule]
    for key, v in values.items():
        if not ok(v):
            raise ValueError(f"algo.{key}={v} must be {rule}")
