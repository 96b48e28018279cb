"""Watch the uncertainty along each relaxation's path: its largest value, and whether it left the confidence region.

A relaxation with ``max_grade`` ends (``stop_reason: "extrapolating"``) at the first geometry whose uncertainty
exceeds it: that geometry is the one to compute with DFT. The largest value met along the path is reported with
every relaxation of a model that measures its uncertainty.
"""

from __future__ import annotations

from typing import Literal

from ...models.prediction import Prediction

#: What the watch says of a relaxation's latest geometry: go on, stop (extrapolating), or it cannot be watched.
Verdict = Literal["go_on", "extrapolating", "no_uncertainty"]


class UncertaintyWatch:
    """The largest uncertainty of each relaxation in flight, and each one's limit (``max_grade``, or None)."""

    def __init__(self) -> None:
        self._limits: dict[str, float | None] = {}
        self._largest: dict[str, float] = {}

    def start(self, key: str, limit: float | None) -> None:
        self._limits[key] = limit

    def see(self, key: str, prediction: Prediction) -> Verdict:
        """Record ``prediction``'s uncertainty for relaxation ``key``; say whether it may go on."""
        limit = self._limits.get(key)
        uncertainty = prediction.uncertainty
        if uncertainty is None:
            return "go_on" if limit is None else "no_uncertainty"
        value = float(uncertainty.value)
        self._largest[key] = max(self._largest.get(key, value), value)
        return "extrapolating" if limit is not None and value > limit else "go_on"

    def finish(self, key: str) -> float | None:
        """Forget relaxation ``key``; return the largest uncertainty it met (None: its model reports none)."""
        self._limits.pop(key, None)
        return self._largest.pop(key, None)

    def clear(self) -> None:
        self._limits.clear()
        self._largest.clear()
