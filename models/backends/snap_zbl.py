"""LAMMPS' ``pair_style zbl`` (Ziegler-Biersack-Littmark screened nuclear repulsion) in torch, per element pair.

``E(r) = Z_i Z_j e²/(4π ε0) / r · Σ_k c_k exp(-d_k r / a)`` with ``a = 0.46850 / (Z_i^0.23 + Z_j^0.23)`` Å, plus
LAMMPS' switch: ``S(t) = A/3 t³ + B/4 t⁴ + C`` for ``t = r - inner > 0`` and ``C`` below, chosen so that the energy
and its first two derivatives vanish at the outer cutoff; zero beyond it. The constants are LAMMPS' (metal units,
``qqr2e = 14.399645``), so that the SNAP include files that overlay ZBL (``Ta06A.snap``, ``InP_JCPA2020.snap``)
are served as LAMMPS evaluates them. Hand-written: a dozen lines of closed-form physics.
"""

from __future__ import annotations

import numpy as np
import torch

from .snap_format import Zbl

#: Coulomb constant e²/(4π ε0) in eV·Å, as LAMMPS' ``units metal`` has it.
QQR2E = 14.399645
_EXPONENT_POWER, _SCREENING_LENGTH = 0.23, 0.46850
_C = np.array([0.02817, 0.28022, 0.50986, 0.18175])
_D = np.array([0.20162, 0.40290, 0.94229, 3.19980])


def _energy_and_derivatives(r: float, zze: float, inverse_a: float) -> tuple[float, float, float]:
    """The unswitched ZBL energy at ``r`` and its first and second derivatives."""
    d = _D * inverse_a
    e = _C * np.exp(-d * r)
    total, slope, curvature = e.sum(), -(d * e).sum(), (d * d * e).sum()
    energy = zze * total / r
    first = zze * (slope - total / r) / r
    second = zze * (curvature - 2.0 * slope / r + 2.0 * total / r**2) / r
    return float(energy), float(first), float(second)


class ZblTerm:
    """The ZBL pair energy of edges, for the element pairs a SNAP include file gives charges for."""

    def __init__(self, zbl: Zbl, elements: tuple[str, ...], device: torch.device, dtype: torch.dtype):
        self.inner, self.outer = zbl.inner, zbl.outer
        n = len(elements)
        table = np.zeros((6, n, n))  # active, zze, 1/a, A/3, B/4, C
        span = zbl.outer - zbl.inner
        for i, first in enumerate(elements):
            for j, second in enumerate(elements):
                if (first, second) not in zbl.charges:
                    continue
                z_i, z_j = zbl.charges[(first, second)]
                zze = z_i * z_j * QQR2E
                inverse_a = (z_i**_EXPONENT_POWER + z_j**_EXPONENT_POWER) / _SCREENING_LENGTH
                value, first_derivative, second_derivative = _energy_and_derivatives(zbl.outer, zze, inverse_a)
                a = (-3.0 * first_derivative + span * second_derivative) / span**2
                b = (2.0 * first_derivative - span * second_derivative) / span**3
                c = -value + span / 2.0 * first_derivative - span**2 / 12.0 * second_derivative
                table[:, i, j] = (1.0, zze, inverse_a, a / 3.0, b / 4.0, c)
        self._table = torch.as_tensor(table, dtype=dtype, device=device)
        self._c = torch.as_tensor(_C, dtype=dtype, device=device)
        self._d = torch.as_tensor(_D, dtype=dtype, device=device)

    def edge_energies(
        self, centre_species: torch.Tensor, neighbour_species: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Half the ZBL energy of each directed edge (each pair is listed both ways); zero where none applies."""
        active, zze, inverse_a, a3, b4, c = self._table[:, centre_species, neighbour_species]
        inside = (active > 0) & (lengths < self.outer)
        r = torch.where(inside, lengths, torch.full_like(lengths, self.outer))  # no inf/nan gradients outside
        screening = (self._c * torch.exp(-self._d * (inverse_a * r)[:, None])).sum(dim=1)
        t = torch.clamp(r - self.inner, min=0.0)
        energy = zze * screening / r + c + t**3 * (a3 + b4 * t)
        return torch.where(inside, 0.5 * energy, torch.zeros_like(energy))
