"""The diagnosis vocabulary: the failure modes and the :class:`Finding` a detector returns.

The CLI, MLflow tags and reports share these names (see DESIGN.md, "Shared vocabulary").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODES = (
    "overfitting",
    "underfitting",
    "non_convergence",
    "flat_minimum",
    "lr_too_high",
    "lr_too_low",
    "class_imbalance",
    "bad_ordering",
)
"""The failure modes of backpropagation a diagnosis can name, in a fixed order.

- ``overfitting``: validation loss rises while training loss falls, with a train − val gap.
- ``underfitting``: the model fits the training data far worse than the data allows.
- ``non_convergence``: the run cannot meet its stop rule as configured (diverged, or its
  loss settled on a floor above ``stop_loss``).
- ``flat_minimum``: the loss hovers above a minimum it never reaches, held up by
  minibatch noise.
- ``lr_too_high``: λ is past the stability limit 2/λ_max(H): the loss oscillates or diverges.
- ``lr_too_low``: λ is so small that even the stiffest direction cannot converge in the budget.
- ``class_imbalance``: a skewed training set biases the weights towards its majority class.
- ``bad_ordering``: the sample order makes consecutive updates cancel; a shuffled twin does better.
"""


@dataclass
class Finding:
    """One failure mode found in a run.

    Attributes:
        mode: one of :data:`MODES`.
        confidence: 0..1, how sure the detector is.
        epoch: the first epoch (1-based) from which the evidence holds.
        evidence: named numbers the claim rests on.
        advice: one concrete sentence saying what to change.
        suggested_config: dotted keys → values, usable with
            :func:`bpexp.config.apply_overrides`; empty when no config change helps.
    """

    mode: str
    confidence: float
    epoch: int
    evidence: dict[str, Any]
    advice: str
    suggested_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1]; got {self.confidence!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: NaN and inf become None, numpy scalars become Python numbers.

        Returns:
            ``{"mode", "confidence", "epoch", "evidence", "advice", "suggested_config"}``.
        """
        return {
            "mode": self.mode,
            "confidence": round(float(self.confidence), 3),
            "epoch": int(self.epoch),
            "evidence": {str(k): _plain(v) for k, v in self.evidence.items()},
            "advice": self.advice,
            "suggested_config": {str(k): _plain(v) for k, v in self.suggested_config.items()},
        }


def _plain(value: Any) -> Any:
    """A JSON-safe copy of ``value`` (numbers rounded to 6 significant digits)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            return None
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    return value


def merge_suggestions(findings: list[Finding]) -> dict[str, Any]:
    """One config patch from every finding's ``suggested_config``.

    Where two findings set the same key, the more confident one wins.

    Returns:
        Dotted keys → values, for :func:`bpexp.config.apply_overrides`.
    """
    patch: dict[str, Any] = {}
    for finding in sorted(findings, key=lambda f: f.confidence):
        patch.update(finding.suggested_config)
    return patch
