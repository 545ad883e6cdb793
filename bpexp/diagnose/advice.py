"""Turning evidence into advice: which config key to change, to what, and in what words.

Numbers in advice are rounded to two significant digits in the safe direction (a
smaller λ is rounded down, a stop threshold up), so the sentence and the patch agree.
"""

from __future__ import annotations

import math
from typing import Any

CYCLIC_SCHEDULES = ("triangular", "triangular2", "exp_range", "one_cycle", "cosine")
DECAYING_SCHEDULES = ("step", "exponential", "one_cycle", "cosine", "triangular2", "exp_range")


def round_down(value: float, digits: int = 2) -> float:
    """``value`` rounded down to ``digits`` significant digits (0.0347 → 0.034)."""
    if not math.isfinite(value) or value <= 0:
        return value
    exponent = math.floor(math.log10(value)) - digits + 1
    scale = 10.0**exponent
    return float(f"{math.floor(value / scale * (1 + 1e-12)) * scale:.{digits}g}")


def round_up(value: float, digits: int = 2) -> float:
    """``value`` rounded up to ``digits`` significant digits (0.0341 → 0.035)."""
    if not math.isfinite(value) or value <= 0:
        return value
    exponent = math.floor(math.log10(value)) - digits + 1
    scale = 10.0**exponent
    return float(f"{math.ceil(value / scale * (1 - 1e-12)) * scale:.{digits}g}")


def fmt(value: Any) -> str:
    """A number for a sentence: 3 significant digits, plain notation where it reads well."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"{value:.3g}"


def pct(share: float) -> str:
    """A share as a whole per cent."""
    return f"{100 * share:.0f}%" if math.isfinite(share) else "?%"


def lr_key(config) -> str:
    """The dotted key holding the run's (peak) λ: the schedule's own value where it sets one."""
    schedule = config.schedule
    if schedule.name in ("constant", "step", "exponential") and getattr(schedule, "lr", None) is not None:
        return "schedule.lr"
    if schedule.name in CYCLIC_SCHEDULES and getattr(schedule, "max_lr", None) is not None:
        return "schedule.max_lr"
    return "optim.lr"


def peak_lr(config) -> float:
    """The largest λ the schedule reaches (its peak, or the constant λ)."""
    key = lr_key(config)
    if key == "schedule.lr":
        return float(config.schedule.lr)
    if key == "schedule.max_lr":
        return float(config.schedule.max_lr)
    return float(config.optim.lr)


def _suggested_lrs(lr_find) -> dict[str, float]:
    """The finite suggestions of a range-test result (``.suggestions``: name → (lr, reason))."""
    out: dict[str, float] = {}
    suggestions = getattr(lr_find, "suggestions", None) or {}
    for name, suggestion in dict(suggestions).items():
        lr = getattr(suggestion, "lr", None)
        if lr is None and isinstance(suggestion, (tuple, list)) and suggestion:
            lr = suggestion[0]
        try:
            lr = float(lr)
        except (TypeError, ValueError):
            continue
        if math.isfinite(lr) and lr > 0:
            out[str(name)] = lr
    return out


def lower_lr(current: float, safe: float | None, lr_find=None, fallback_divisor: float = 10.0) -> tuple[float, str]:
    """A smaller λ for a run that oscillates or diverges, and where it comes from.

    Order of preference: the range test's largest suggestion below ``current`` (and
    below ``safe`` where known), else ``safe`` (half the stability limit, from λ_max),
    else ``current / fallback_divisor``.

    Returns:
        ``(λ, source)`` with λ rounded down to two significant digits.
    """
    cap = min(current, safe) if safe is not None and math.isfinite(safe) and safe > 0 else current
    candidates = {k: v for k, v in _suggested_lrs(lr_find).items() if v < 0.9 * cap}
    if candidates:
        name = max(candidates, key=candidates.get)
        return round_down(candidates[name]), f"the range test's {name}"
    if safe is not None and math.isfinite(safe) and 0 < safe < current:
        return round_down(safe), "1/λ_max"
    return round_down(current / fallback_divisor), f"λ/{fallback_divisor:g}"


def higher_lr(current: float, safe: float | None, lr_find=None, fallback_factor: float = 10.0) -> tuple[float, str]:
    """A larger λ for a run that crawls, and where it comes from.

    The range test's largest suggestion above ``current`` (capped at ``safe``), else
    ``safe``, else ``current × fallback_factor``.

    Returns:
        ``(λ, source)`` with λ rounded down to two significant digits.
    """
    has_safe = safe is not None and math.isfinite(safe) and safe > 0
    candidates = {k: v for k, v in _suggested_lrs(lr_find).items() if v > 1.5 * current and (not has_safe or v <= safe)}
    if candidates:
        name = max(candidates, key=candidates.get)
        return round_down(candidates[name]), f"the range test's {name}"
    if has_safe and safe > current:
        return round_down(safe), "1/λ_max"
    return round_down(current * fallback_factor), f"λ×{fallback_factor:g}"
