"""What a potential returns for one structure, and the names of the properties it may be asked for.

Free of torch, so the HTTP front end and the relaxation code can use it without loading a model framework.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..protocol import ALL_PROPERTIES, Property

__all__ = ["ALL_PROPERTIES", "ENERGY", "FORCES", "STRESS", "Prediction", "Property"]

ENERGY, FORCES, STRESS = "energy", "forces", "stress"


@dataclass
class Prediction:
    """Results for one system in ASE units and sign conventions.

    ``stress`` is the Cauchy stress in eV/Å³ with ASE's sign (tensile positive, ``(1/V) dE/dstrain``);
    None for a non-periodic system or when it was not requested.
    """

    energy: float
    forces: np.ndarray | None = None  # (n, 3) eV/Å
    stress: np.ndarray | None = None  # (3, 3) eV/Å³
