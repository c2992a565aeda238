"""Config checks shared by every config dataclass: a bad value fails when the config is built, before
any compute, with the class, the field, the rule and the value in one message."""

from __future__ import annotations

import math


def require(config: object, *names: str, at_least: float | None = None, above: float | None = None,
            below: float | None = None) -> None:
    """Each named field (or each element of a tuple field) must satisfy every bound given; NaN fails all."""
    rules = [(at_least, "≥", lambda v, b: v >= b), (above, ">", lambda v, b: v > b), (below, "<", lambda v, b: v < b)]
    for name in names:
        value = getattr(config, name)
        for element in value if isinstance(value, tuple) else (value,):
            for bound, symbol, holds in rules:
                if bound is not None and not (holds(element, bound) and not math.isnan(element)):
                    raise ValueError(f"{type(config).__name__}.{name} must be {symbol} {bound}, got {value!r}")
