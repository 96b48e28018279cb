"""What a potential returns for one structure, and the names of the properties it may be asked for.

Free of torch, so the HTTP front end and the relaxation code can use it without loading a model framework.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..protocol import ALL_PROPERTIES, Property

__all__ = ["ALL_PROPERTIES", "ENERGY", "FORCES", "STRESS", "Prediction", "Property", "Uncertainty", "UncertaintyKind"]

ENERGY, FORCES, STRESS = "energy", "forces", "stress"


#: ``grade``: MTP's extrapolation grade (MaxVol); ``gamma``: ACE's γ (D-optimality); ``committee``: members' spread.
UncertaintyKind = Literal["grade", "gamma", "committee"]


@dataclass
class Uncertainty:
    """How far one structure lies outside what the model knows.

    ``value`` is the structure's figure: the extrapolation grade (configuration mode) or the largest per-atom grade
    (neighbourhood mode), ACE's largest per-atom γ, or a committee's largest per-atom force spread (eV/Å). A grade or
    γ above 1 means extrapolation.
    """

    kind: UncertaintyKind
    value: float
    #: Per-atom figures, (n,), where the measure has them (neighbourhood grades, γ, committee force spreads).
    per_atom: np.ndarray | None = None
    #: Further named figures, e.g. a committee's ``energy_std_per_atom`` (eV/atom) and ``forces_std_mean`` (eV/Å).
    components: dict[str, float] = field(default_factory=dict)


@dataclass
class Prediction:
    """Results for one system in ASE units and sign conventions.

    ``stress`` is the Cauchy stress in eV/Å³ with ASE's sign (tensile positive, ``(1/V) dE/dstrain``);
    None for a non-periodic system or when it was not requested.
    """

    energy: float
    forces: np.ndarray | None = None  # (n, 3) eV/Å
    stress: np.ndarray | None = None  # (3, 3) eV/Å³
    #: Set by potentials that measure their own uncertainty (``Potential.uncertainty_kind``), else None.
    uncertainty: Uncertainty | None = None
