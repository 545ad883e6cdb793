"""How the commands' human summaries write a value."""

from __future__ import annotations

import math
from typing import Any


def fmt(value: Any, spec: str = ".4g") -> str:
    """A value for a summary table: ``-`` for None, floats by ``spec`` (inf and nan as words), else str().

    Returns:
        The text.
    """
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec) if math.isfinite(value) else str(value)
    return str(value)
