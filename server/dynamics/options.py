"""One structure's relaxation as the optimizers see it: the request's options and the atoms that must not move."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...protocol import OptimizerName, RelaxOptions

__all__ = ["OptimizerName", "RelaxOptions", "RelaxSpec"]


@dataclass(frozen=True)
class RelaxSpec:
    """One structure's relaxation: the request's options and the atoms that must not move."""

    options: RelaxOptions
    #: Indices of fixed atoms, or None.
    fixed: np.ndarray | None = None
