"""SNAP bispectrum components of every atom of a batch, in torch (Thompson et al., J. Comput. Phys. 285, 316).

The neighbour density of atom i is expanded in Wigner U-functions of the 3-sphere: each neighbour at ``r`` inside
its pair cutoff ``R_ij`` maps to the point of the 3-sphere with polar angle ``θ0 = rfac0 π (r - rmin0) / (R_ij -
rmin0)`` in the direction ``r / |r|``, with Cayley-Klein parameters ``a = (z0 - i z) / r0``, ``b = (y - i x) / r0``
(``z0 = r / tan θ0``, ``r0² = r² + z0²``), and

* ``U^j`` (j = 0 .. twojmax, j = 2J) by LAMMPS' recursion (VMK 4.8.2): the rows ``mb <= j/2`` of layer j from
  layer j - 1, ``u_j[mb, ma] = √((j-ma)/(j-mb)) a* u_{j-1}[mb, ma] - √(ma/(j-mb)) b* u_{j-1}[mb, ma-1]``, the
  others by the symmetry ``u_j[j-mb, j-ma] = (-1)^(ma+mb) u_j[mb, ma]*``;
* ``Utot^j = wself·δ(ma, mb) + Σ_neighbours w_j fc(r) U^j`` (per neighbour element with ``chemflag``; the self
  term only in the atom's own element's channel unless ``wselfallflag``), ``fc`` the cosine switch;
* ``Z^{j}_{j1 j2}[ma, mb] = Σ C^{j ma}_{j1 ma1 j2 ma2} C^{j mb}_{j1 mb1 j2 mb2} Utot^{j1}[mb1, ma1] Utot^{j2}[mb2,
  ma2]`` (divided by j + 1 with ``bnormflag``);
* ``B_{j1 j2 j} = 2 Σ Re(Utot^j* Z^j_{j1 j2})`` over the rows ``mb < j/2`` and, for even j, the middle row's
  entries ``ma < j/2`` plus half its centre (the other half of the matrix mirrors these), minus ``bzero`` where
  ``bzeroflag`` says so, for j1 >= j2, j >= j1 in LAMMPS' order (``idxb``).

Batching: all edges of a batch are one tensor, so the recursion is one small set of tensor operations per layer;
``Z`` and ``B`` are sparse bilinear forms over ``Utot``, evaluated as row gathers of a (component, atom) matrix
and ``index_add``. Hand-written (after LAMMPS' ``sna.cpp`` formulas) because no library evaluates SNAP batched
in torch; the tests compare against LAMMPS itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from .snap_format import SnapParameters


@cache
def clebsch_gordan(j1: int, j2: int, j: int, m1: int, m2: int) -> float:
    """<j1/2 m1/2; j2/2 m2/2 | j/2 (m1+m2)/2> for doubled angular momenta and projections (Racah's formula)."""
    m = m1 + m2
    if abs(m1) > j1 or abs(m2) > j2 or abs(m) > j or (j1 + j2 + j) % 2 or not abs(j1 - j2) <= j <= j1 + j2:
        return 0.0
    f = math.factorial
    half = lambda x: x // 2  # noqa: E731 - every argument below is even by the checks above
    triangle = f(half(j1 + j2 - j)) * f(half(j1 - j2 + j)) * f(half(-j1 + j2 + j)) / f(half(j1 + j2 + j) + 1)
    norm = (j + 1) * f(half(j + m)) * f(half(j - m)) * f(half(j1 - m1)) * f(half(j1 + m1))
    norm *= f(half(j2 - m2)) * f(half(j2 + m2))
    total = 0.0
    for k in range(half(j1 + j2 + j) + 1):
        terms = (half(j1 + j2 - j) - k, half(j1 - m1) - k, half(j2 + m2) - k, half(j - j2 + m1) + k)
        terms += (half(j - j1 - m2) + k,)
        if min(terms) < 0:
            continue
        denominator = f(k)
        for term in terms:
            denominator *= f(term)
        total += (-1) ** k / denominator
    return math.sqrt(triangle * norm) * total


def bispectrum_indices(twojmax: int) -> list[tuple[int, int, int]]:
    """(j1, j2, j) of each bispectrum component, in LAMMPS' order (j1 >= j2, j >= j1, j1 + j2 + j even)."""
    return [
        (j1, j2, j)
        for j1 in range(twojmax + 1)
        for j2 in range(j1 + 1)
        for j in range(j1 - j2, min(twojmax, j1 + j2) + 1, 2)
        if j >= j1
    ]


@dataclass(frozen=True)
class _Plan:
    """Gather indices and weights of Z and B, flattened over element channels (``channels`` of ``layer`` rows)."""

    z_rows: torch.Tensor  # (T,) the Z entry each product term adds to
    z_left: torch.Tensor  # (T,) Utot row of the first factor
    z_right: torch.Tensor  # (T,) Utot row of the second factor
    z_weight: torch.Tensor  # (T,) complex: the two Clebsch-Gordan coefficients' product (/ (j+1) with bnormflag)
    b_rows: torch.Tensor  # (S,) the B component each term adds to
    b_u: torch.Tensor  # (S,) Utot row that is conjugated
    b_z: torch.Tensor  # (S,) Z row
    b_weight: torch.Tensor  # (S,) 2 or 1 (the centre of an even j's middle row)
    n_z: int


class Bispectrum:
    """Computes the bispectrum components of every atom from its edges, for one set of SNAP parameters."""

    def __init__(self, parameters: SnapParameters, n_elements: int, device: torch.device, dtype: torch.dtype):
        self.parameters = parameters
        self.twojmax = parameters.twojmax
        self.channels = n_elements if parameters.chemflag else 1
        self.n_elements = n_elements
        self.device, self.dtype = device, dtype
        self.complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        self.indices = bispectrum_indices(self.twojmax)
        #: Components per atom: ``len(indices)`` times channels³ with ``chemflag``.
        self.n_components = len(self.indices) * self.channels**3
        self.layer_start = np.cumsum([0] + [(j + 1) ** 2 for j in range(self.twojmax + 1)])
        self.layer_size = int(self.layer_start[-1])  # LAMMPS' idxu_max
        self._build_recursion()
        self._plan = self._build_plan()
        #: Product terms of Z (each a complex product per atom): the size of the largest intermediate per atom.
        self.n_product_terms = int(self._plan.z_rows.shape[0])
        self._self_term, self._bzero = self._build_constants()

    # -- tables -------------------------------------------------------------------------------------------------

    def _build_recursion(self) -> None:
        """Per layer j: the coefficients of a* and b* of the rows mb <= j/2, and the signs of the mirrored rows."""
        self._a_coefficients, self._b_coefficients, self._mirror_signs = [], [], []
        for j in range(1, self.twojmax + 1):
            rows = j // 2 + 1
            a_coefficient = np.zeros((rows, j + 1))
            b_coefficient = np.zeros((rows, j + 1))
            for mb in range(rows):
                for ma in range(j + 1):
                    if ma < j:
                        a_coefficient[mb, ma] = math.sqrt((j - ma) / (j - mb))
                    if ma > 0:
                        b_coefficient[mb, ma] = math.sqrt(ma / (j - mb))
            signs = np.array([[(-1.0) ** (ma + mb) for ma in range(j + 1)] for mb in range(rows, j + 1)])
            as_tensor = lambda x: torch.as_tensor(x, dtype=self.dtype, device=self.device)  # noqa: E731
            self._a_coefficients.append(as_tensor(a_coefficient))
            self._b_coefficients.append(as_tensor(b_coefficient))
            self._mirror_signs.append(as_tensor(signs.reshape(j + 1 - rows, j + 1)))

    def _u_row(self, channel: int, j: int, mb: int, ma: int) -> int:
        return channel * self.layer_size + int(self.layer_start[j]) + mb * (j + 1) + ma

    def _build_plan(self) -> _Plan:
        """Z entries (j1, j2, j, ma, mb <= j/2) for the needed (j1, j2, j), their product terms, and B's terms."""
        bnorm = self.parameters.bnormflag
        channels = self.channels
        # (Z row, first factor, second factor) -> weight; with j1 = j2 in one channel the products U[p] U[q] and
        # U[q] U[p] come with the same weight (the two Clebsch-Gordan signs cancel) and are merged into one term
        terms: dict[tuple[int, int, int], float] = {}
        z_entry: dict[tuple[int, int, int, int, int, int, int], int] = {}  # (c1, c2, j1, j2, j, mb, ma) -> row
        for c1 in range(channels):
            for c2 in range(channels):
                for j1, j2, j in self.indices:
                    for mb in range(j // 2 + 1):
                        for ma in range(j + 1):
                            row = len(z_entry)
                            z_entry[(c1, c2, j1, j2, j, mb, ma)] = row
                            for mb1 in range(j1 + 1):
                                mb2 = (2 * mb - j - (2 * mb1 - j1) + j2) // 2
                                if not 0 <= mb2 <= j2:
                                    continue
                                cg_b = clebsch_gordan(j1, j2, j, 2 * mb1 - j1, 2 * mb2 - j2)
                                if cg_b == 0.0:
                                    continue
                                for ma1 in range(j1 + 1):
                                    ma2 = (2 * ma - j - (2 * ma1 - j1) + j2) // 2
                                    if not 0 <= ma2 <= j2:
                                        continue
                                    cg_a = clebsch_gordan(j1, j2, j, 2 * ma1 - j1, 2 * ma2 - j2)
                                    if cg_a == 0.0:
                                        continue
                                    left, right = self._u_row(c1, j1, mb1, ma1), self._u_row(c2, j2, mb2, ma2)
                                    key = (row, min(left, right), max(left, right))
                                    terms[key] = terms.get(key, 0.0) + cg_a * cg_b / (j + 1 if bnorm else 1)
        b_rows, b_u, b_z, b_weight = [], [], [], []
        n_b = len(self.indices)
        for c1 in range(channels):
            for c2 in range(channels):
                for c3 in range(channels):
                    triple = (c1 * channels + c2) * channels + c3
                    for jjb, (j1, j2, j) in enumerate(self.indices):
                        for mb in range(j // 2 + 1):
                            for ma in range(j + 1):
                                if 2 * mb == j and ma > mb:  # the middle row of an even j: ma < j/2 and its centre
                                    continue
                                b_rows.append(triple * n_b + jjb)
                                b_u.append(self._u_row(c3, j, mb, ma))
                                b_z.append(z_entry[(c1, c2, j1, j2, j, mb, ma)])
                                b_weight.append(1.0 if (2 * mb == j and ma == mb) else 2.0)

        def tensor(values: list, dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return torch.as_tensor(np.array(values), dtype=dtype, device=self.device)

        z_rows, z_left, z_right = zip(*terms, strict=True)
        return _Plan(
            z_rows=tensor(z_rows),
            z_left=tensor(z_left),
            z_right=tensor(z_right),
            z_weight=tensor(list(terms.values()), self.complex_dtype),
            b_rows=tensor(b_rows),
            b_u=tensor(b_u),
            b_z=tensor(b_z),
            b_weight=tensor(b_weight, self.dtype),
            n_z=len(z_entry),
        )

    def _build_constants(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The self term of Utot, (channels·layer, n_elements), and bzero, (n_components, n_elements)."""
        parameters, channels, n_b = self.parameters, self.channels, len(self.indices)
        self_term = np.zeros((channels * self.layer_size, self.n_elements))
        bzero = np.zeros((self.n_components, self.n_elements))
        for element in range(self.n_elements):
            own = element if parameters.chemflag else 0
            for channel in range(channels):
                if channel == own or parameters.wselfallflag:
                    for j in range(self.twojmax + 1):
                        for ma in range(j + 1):
                            self_term[self._u_row(channel, j, ma, ma), element] = 1.0  # wself = 1
            if parameters.bzeroflag:
                shifts = np.array([1.0 if parameters.bnormflag else j + 1.0 for _, _, j in self.indices])
                triples = range(channels**3) if parameters.wselfallflag else [(own * channels + own) * channels + own]
                for triple in triples:
                    bzero[triple * n_b : (triple + 1) * n_b, element] = shifts
        as_tensor = lambda x: torch.as_tensor(x, dtype=self.dtype, device=self.device)  # noqa: E731
        return as_tensor(self_term), as_tensor(bzero)

    # -- evaluation ---------------------------------------------------------------------------------------------

    def wigner_u(self, vectors: torch.Tensor, lengths: torch.Tensor, cutoffs: torch.Tensor) -> torch.Tensor:
        """U-functions of the edges, (E, layer_size) complex, layers j = 0.. flattened as LAMMPS' ``ulist``."""
        parameters = self.parameters
        theta0 = (lengths - parameters.rmin0) * (parameters.rfac0 * math.pi) / (cutoffs - parameters.rmin0)
        z0 = lengths / torch.tan(theta0)
        r0_inverse = 1.0 / torch.sqrt(lengths * lengths + z0 * z0)
        x, y, z = vectors[:, 0], vectors[:, 1], vectors[:, 2]
        a_conjugate = torch.complex(z0 * r0_inverse, z * r0_inverse)[:, None, None]  # a* = (z0 + i z) / r0
        b_conjugate = torch.complex(y * r0_inverse, x * r0_inverse)[:, None, None]  # b* = (y + i x) / r0
        previous = torch.ones(lengths.shape[0], 1, 1, dtype=self.complex_dtype, device=self.device)
        layers = [previous.reshape(-1, 1)]
        for j in range(1, self.twojmax + 1):
            rows = j // 2 + 1
            top = previous[:, :rows, :]
            left = torch.nn.functional.pad(top, (0, 1)) * self._a_coefficients[j - 1]
            right = torch.nn.functional.pad(top, (1, 0)) * self._b_coefficients[j - 1]
            upper = a_conjugate * left - b_conjugate * right
            lower = upper[:, : j + 1 - rows, :].flip(1, 2).conj() * self._mirror_signs[j - 1]
            previous = torch.cat([upper, lower], dim=1)
            layers.append(previous.reshape(-1, (j + 1) ** 2))
        return torch.cat(layers, dim=1)

    def switch(self, lengths: torch.Tensor, cutoffs: torch.Tensor) -> torch.Tensor:
        """LAMMPS' cosine switching function of each edge (1 everywhere with ``switchflag 0``)."""
        rmin0 = self.parameters.rmin0
        if not self.parameters.switchflag:
            return torch.ones_like(lengths)
        value = 0.5 * (torch.cos((lengths - rmin0) * math.pi / (cutoffs - rmin0)) + 1.0)
        return torch.where(lengths <= rmin0, torch.ones_like(value), value)

    def components(
        self,
        species: torch.Tensor,
        centres: torch.Tensor,
        neighbour_species: torch.Tensor,
        vectors: torch.Tensor,
        cutoffs: torch.Tensor,
        weights: torch.Tensor,
        chunk_atoms: int,
    ) -> torch.Tensor:
        """Bispectrum components (n_components, n_atoms) of atoms with element ``species`` (n_atoms,), given their
        edges inside the cutoffs (``centres``, ``neighbour_species``, ``vectors`` (E, 3), pair ``cutoffs`` and
        neighbour ``weights``); Z and B are built ``chunk_atoms`` atoms at a time."""
        n_atoms = species.shape[0]
        lengths = torch.linalg.vector_norm(vectors, dim=1)
        u = self.wigner_u(vectors, lengths, cutoffs)
        scale = (self.switch(lengths, cutoffs) * weights).to(self.complex_dtype)
        channel = neighbour_species if self.parameters.chemflag else torch.zeros_like(neighbour_species)
        slots = centres * self.channels + channel
        total = torch.zeros(n_atoms * self.channels, self.layer_size, dtype=self.complex_dtype, device=self.device)
        total = total.index_add(0, slots, u * scale[:, None])
        total = total.reshape(n_atoms, -1).T + self._self_term[:, species]
        parts = [self._from_utot(total[:, start : start + chunk_atoms]) for start in range(0, n_atoms, chunk_atoms)]
        b = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return b - self._bzero[:, species]

    def _from_utot(self, total: torch.Tensor) -> torch.Tensor:
        """B (n_components, atoms) from Utot (channels·layer_size, atoms)."""
        plan = self._plan
        products = (total[plan.z_left] * plan.z_weight[:, None]) * total[plan.z_right]
        z = torch.zeros(plan.n_z, total.shape[1], dtype=self.complex_dtype, device=self.device)
        z = z.index_add(0, plan.z_rows, products)
        u, zz = total[plan.b_u], z[plan.b_z]
        terms = (u.real * zz.real + u.imag * zz.imag) * plan.b_weight[:, None]
        b = torch.zeros(self.n_components, total.shape[1], dtype=self.dtype, device=self.device)
        return b.index_add(0, plan.b_rows, terms)
