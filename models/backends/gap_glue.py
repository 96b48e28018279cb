"""QUIP's ``Glue`` potential (``<Glue_params>``), the core repulsion some GAP XML files add to the GAP, in torch.

Hand-written from QUIP's ``IPModel_Glue.f95`` and ``spline_module`` (Fortran, no Python evaluator besides quippy):

``E = Σ_i [ U_i(ρ_i) + ½ Σ_j φ_ij(r_ij) ]`` with ``ρ_i = Σ_j ρ_j(r_ij)`` over neighbours of known types, ``ρ_j`` for
``r`` below its density's last knot and ``φ_ij`` below its last knot. ``ρ`` is ``poly (r_c - r)³`` (``poly`` the
least-squares fit to the listed points) unless ``do_spline=T``; ``U`` (``<potential_density>``, natural unless
``y1``/``yn`` are given) and ``φ`` (``<potential_pair>``, end slopes ``y1``/``yn``, 0 when absent) are QUIP's cubic
splines, extended linearly outside their knots. ``<potential_neighbours>`` is refused by name.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

import numpy as np
import torch

from .gap_format import GapFormatError, fortran_float

#: QUIP's marker for "no end slope given": a natural spline end.
NATURAL = 2.0e30


@dataclass
class CubicSpline:
    """QUIP's ``spline``: knots, values, second derivatives and end slopes (linear extension outside)."""

    x: np.ndarray
    y: np.ndarray
    y2: np.ndarray
    slope_first: float
    slope_last: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, yp1: float, ypn: float) -> CubicSpline:
        """QUIP's ``spline_y2calc`` (the classic tridiagonal sweep); natural ends where a slope is > 0.99e30."""
        n = x.size
        y2, u = np.zeros(n), np.zeros(n)
        if yp1 > 0.99e30:
            y2[0] = u[0] = 0.0
        else:
            y2[0] = -0.5
            u[0] = (3.0 / (x[1] - x[0])) * ((y[1] - y[0]) / (x[1] - x[0]) - yp1)
        for i in range(1, n - 1):
            sig = (x[i] - x[i - 1]) / (x[i + 1] - x[i - 1])
            p = sig * y2[i - 1] + 2.0
            y2[i] = (sig - 1.0) / p
            u[i] = (y[i + 1] - y[i]) / (x[i + 1] - x[i]) - (y[i] - y[i - 1]) / (x[i] - x[i - 1])
            u[i] = (6.0 * u[i] / (x[i + 1] - x[i - 1]) - sig * u[i - 1]) / p
        if ypn > 0.99e30:
            qn = un = 0.0
        else:
            qn = 0.5
            un = (3.0 / (x[n - 1] - x[n - 2])) * (ypn - (y[n - 1] - y[n - 2]) / (x[n - 1] - x[n - 2]))
        y2[n - 1] = (un - qn * u[n - 2]) / (qn * y2[n - 2] + 1.0)
        for k in range(n - 2, -1, -1):
            y2[k] = y2[k] * y2[k + 1] + u[k]
        spline = cls(x, y, y2, yp1, ypn)
        if yp1 > 0.99e30:
            spline.slope_first = spline.derivative_at(0, x[0])
        if ypn > 0.99e30:
            spline.slope_last = spline.derivative_at(n - 2, x[n - 1])
        return spline

    def derivative_at(self, klo: int, value: float) -> float:
        """The derivative of interval ``klo``'s cubic at ``value`` (QUIP's ``spline_deriv``)."""
        x, y, y2 = self.x, self.y, self.y2
        h = x[klo + 1] - x[klo]
        a, b = (x[klo + 1] - value) / h, (value - x[klo]) / h
        return float((y[klo + 1] - y[klo]) / h + ((1 - 3 * a * a) * y2[klo] + (3 * b * b - 1) * y2[klo + 1]) * h / 6)

    @property
    def last_knot(self) -> float:
        return float(self.x[-1])

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """QUIP's ``spline_value``: the cubic of the interval, linear beyond the first and last knots."""
        x = torch.as_tensor(self.x, dtype=values.dtype, device=values.device)
        y = torch.as_tensor(self.y, dtype=values.dtype, device=values.device)
        y2 = torch.as_tensor(self.y2, dtype=values.dtype, device=values.device)
        klo = (torch.searchsorted(x, values.detach(), right=True) - 1).clamp(0, x.numel() - 2)
        khi = klo + 1
        h = x[khi] - x[klo]
        a, b = (x[khi] - values) / h, (values - x[klo]) / h
        inside = a * y[klo] + b * y[khi] + ((a**3 - a) * y2[klo] + (b**3 - b) * y2[khi]) * (h * h) / 6.0
        below = y[0] + (values - x[0]) * self.slope_first
        above = y[-1] + (values - x[-1]) * self.slope_last
        return torch.where(values < x[0], below, torch.where(values > x[-1], above, inside))


@dataclass
class GlueType:
    """One Glue species: its density (spline or cubic polynomial) and embedding ``U(ρ)``."""

    atomic_number: int
    density: CubicSpline
    density_spline: bool
    poly: float
    embedding: CubicSpline | None

    def density_of(self, r: torch.Tensor) -> torch.Tensor:
        cutoff = self.density.last_knot
        value = self.density(r) if self.density_spline else self.poly * (cutoff - r) ** 3
        return torch.where(r < cutoff, value, torch.zeros_like(r))


class GluePotential:
    """QUIP's ``IP Glue`` from a ``<Glue_params>`` element."""

    def __init__(self, element: ElementTree.Element, where: str):
        n_types = int(element.get("n_types", "0"))
        self.types: dict[int, GlueType] = {}
        self.pairs: dict[tuple[int, int], CubicSpline] = {}
        numbers: dict[int, int] = {}
        for data in element.findall("per_type_data"):
            type_index, z = int(data.get("type", "0")), int(data.get("atomic_num", "0"))
            if data.find("potential_neighbours") is not None:
                raise GapFormatError(f"{where}: Glue <potential_neighbours> is not supported")
            density = data.find("density")
            if density is None:
                raise GapFormatError(f"{where}: Glue type {type_index} has no <density>")
            rx, ry = _points(density, "a", "rho")
            spline = CubicSpline.fit(
                rx, ry, fortran_float(density.get("density_y1")), fortran_float(density.get("density_yn"))
            )
            distance = rx[-1] - rx
            poly = float(np.dot(ry, distance**3) / np.dot(distance**3, distance**3))
            embedding = None
            potential = data.find("potential_density")
            if potential is not None:
                ex, ey = _points(potential, "rho", "E")
                ends = (fortran_float(potential.get(key)) if potential.get(key) else NATURAL for key in ("y1", "yn"))
                embedding = CubicSpline.fit(ex, ey, *ends)
            do_spline = density.get("do_spline", "F").strip().upper().startswith("T")
            self.types[z] = GlueType(z, spline, do_spline, poly, embedding)
            numbers[type_index] = z
        if len(numbers) != n_types:
            raise GapFormatError(f"{where}: Glue_params n_types={n_types} but {len(numbers)} <per_type_data>")
        for data in element.findall("per_pair_data"):
            first, second = numbers[int(data.get("type1", "0"))], numbers[int(data.get("type2", "0"))]
            pair = data.find("potential_pair")
            if pair is None:
                continue
            px, py = _points(pair, "r", "E")
            ends = (fortran_float(pair.get(key)) if pair.get(key) else 0.0 for key in ("y1", "yn"))
            spline = CubicSpline.fit(px, py, *ends)
            self.pairs[(first, second)] = self.pairs[(second, first)] = spline
        cutoffs = [glue.density.last_knot for glue in self.types.values()]
        self.cutoff = max(cutoffs + [spline.last_knot for spline in self.pairs.values()])
        self.elements = frozenset(self.types)

    def energy(self, senders: torch.Tensor, receivers: torch.Tensor, distances: torch.Tensor,
               numbers: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """(N,) Glue energy of each atom."""
        zi, zj = numbers[senders], numbers[receivers]
        site = distances.new_zeros(numbers.shape[0])
        density = distances.new_zeros(numbers.shape[0])
        for z, glue in self.types.items():  # neighbour j's density at i, for i of a known type
            mask = (zj == z) & torch.isin(zi, torch.tensor(list(self.types), device=zi.device))
            density = density.index_add(0, senders[mask], glue.density_of(distances[mask]))
        for (first, second), spline in self.pairs.items():
            mask = (zi == first) & (zj == second) & (distances < spline.last_knot)
            site = site.index_add(0, senders[mask], 0.5 * spline(distances[mask]))
        for z, glue in self.types.items():
            if glue.embedding is not None:
                atoms = numbers == z
                site = torch.where(atoms, site + glue.embedding(density), site)
        return site


def _points(element: ElementTree.Element, x_name: str, y_name: str) -> tuple[np.ndarray, np.ndarray]:
    points = element.findall("point")
    x = np.array([fortran_float(point.get(x_name)) for point in points])
    y = np.array([fortran_float(point.get(y_name)) for point in points])
    return x, y
