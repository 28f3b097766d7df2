"""Plain numbers for cards, result rows and JSON: the one place a missing or non-finite value becomes None."""
from __future__ import annotations

import math
from typing import Any

__all__ = ["finite_or_none"]


def finite_or_none(value: Any) -> float | None:
    """`value` as a finite float; None for None, NaN, +-inf, '' and anything that is not a number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
