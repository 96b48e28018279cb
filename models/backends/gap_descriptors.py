"""GAP's descriptors in batched torch: ``distance_2b`` and ``soap``, exactly as QUIP/GAP computes them.

Our own implementation (GAP's is Fortran under an academic non-commercial licence, one structure at a time on the
CPU), following ``descriptors.F90``:

* ``distance_2b``: one descriptor per directed pair ``i -> j`` (both directions, as QUIP's full neighbour lists give
  them) with ``r_ij < cutoff`` and species ``{Z1, Z2}`` (0 is a wildcard): ``x = r^exponents``, weighted by the
  cosine cutoff transition ``fc(r)`` (times ``(erf(tail_range r) / r)^tail_exponent`` where a tail is set).
* ``soap``: one descriptor per centre atom (``Z``, 0 a wildcard): the neighbour density of each species
  (``species_Z``) as Gaussians of width ``atom_sigma``, plus the centre's own Gaussian times ``central_weight``,
  cut off by ``fc(r)`` (times QUIP's ``cutoff_dexp`` decay where set), expanded in spherical harmonics up to
  ``l_max`` and in ``n_max`` radial functions:
  ``c_nlm = Σ_j fc(r_ij) Σ_a i_l(r_ij, r_a) T_l[a, n] Y_lm(r̂_ij)`` with ``i_l(r, r_a) = exp(-α(r² + r_a²))
  i_l(2α r r_a)`` (QUIP's scaled modified spherical Bessel functions, by its upward recurrence) on a radial grid
  ``r_a`` reaching ``cutoff_basis = cutoff + atom_sigma sqrt(2 basis_error_exponent ln 10)``. ``T_l`` orthonormalises
  the basis as QUIP does: for ``EQUISPACED_GAUSS`` (the default) ``T = C⁻¹ L`` (C the covariance of ``n_max``
  Gaussians ``cutoff_basis / n_max`` apart, L the Cholesky factor of their overlap); for ``GTO`` (Gaussian-type
  orbitals ``r^l exp(-a_ln r²)``) and ``POLY`` (``(r_c - r)^(n+2)``) the least-squares fit on a ``3 n_max`` grid to
  ``B L⁻ᵀ`` (B the basis on the grid, L the Cholesky factor of its analytic overlap), QUIP's QR solve. The power
  spectrum ``p_(ab)l = Σ_m c_alm c_blm / sqrt(2l+1)`` (``a >= b`` over species×radial channels, off-diagonal times
  √2, in QUIP's order, l fastest) is normalised to unit length (``normalise``) and ends with ``covariance_sigma0``.

Spherical harmonics enter only through ``Σ_m``, so real orthonormal harmonics give QUIP's complex ones' numbers.
Options that change the descriptor in ways not written here are refused by name (:class:`DescriptorNotSupported`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import cho_factor, cho_solve, cholesky
from scipy.special import erf, gamma, gammainc

from .ace import spherical_harmonics
from .gap_format import parse_args

#: SOAP options whose non-default values change the descriptor in ways this module does not implement.
_SOAP_REFUSED = {
    "average": "F",
    "diagonal_radial": "F",
    "nu_R": "2",
    "nu_S": "2",
    "Z_mix": "F",
    "R_mix": "F",
    "sym_mix": "F",
    "coupling": "T",
    "K": "0",
    "Z_map": "",
}
_DISTANCE_2B_REFUSED = {"only_intra": "F", "only_inter": "F", "resid_name": ""}


#: SOAP radial bases (``radial_basis``); files without one use EQUISPACED_GAUSS, as QUIP does.
RADIAL_BASES = ("EQUISPACED_GAUSS", "GTO", "POLY")


class DescriptorNotSupported(ValueError):
    """A descriptor kind or option this implementation does not compute; the message names it."""


@dataclass
class Edges:
    """Directed neighbour pairs of a batch: vectors from ``senders`` to ``receivers`` (images), their lengths."""

    senders: torch.Tensor
    receivers: torch.Tensor
    vectors: torch.Tensor
    distances: torch.Tensor
    numbers: torch.Tensor  #: (N,) atomic numbers of all atoms
    n_atoms: int


def coordination(r: torch.Tensor, cutoff: float, width: float) -> torch.Tensor:
    """QUIP's ``coordination_function``: 1 below ``cutoff - width``, a half cosine to 0 at ``cutoff``."""
    inside = 0.5 * (torch.cos(math.pi * (r - cutoff + width) / width) + 1.0) if width > 0 else torch.ones_like(r)
    return torch.where(r > cutoff - width, inside, torch.ones_like(r)) * (r <= cutoff)


def _flag(value: str) -> bool:
    return value.strip().upper().startswith("T")


def _ints(value: str) -> list[int]:
    return [int(item) for item in value.replace(",", " ").split()]


class Distance2b:
    """QUIP's ``distance_2b`` descriptor."""

    def __init__(self, args: str):
        params = parse_args(args)
        for name, default in _DISTANCE_2B_REFUSED.items():
            if params.get(name, default).strip().upper() not in (default, "F" if default == "F" else default):
                raise DescriptorNotSupported(f"distance_2b option {name}={params[name]} is not supported")
        self.cutoff = float(params.get("cutoff", "0"))
        self.width = float(params.get("cutoff_transition_width", "0.5"))
        self.z1, self.z2 = int(params.get("Z1", "0")), int(params.get("Z2", "0"))
        n_exponents = int(params.get("n_exponents", "1"))
        if "exponents" in params:
            exponents = [float(value) for value in params["exponents"].split()]
        else:
            exponents = [1.0] if n_exponents == 1 else [-float(i) for i in range(1, n_exponents + 1)]
        if len(exponents) != n_exponents:
            raise DescriptorNotSupported(f"distance_2b: {len(exponents)} exponents for n_exponents={n_exponents}")
        self.exponents = exponents
        self.tail_exponent = int(params.get("tail_exponent", "0"))
        self.tail_range = float(params.get("tail_range", "1.0"))
        self.dimensions = n_exponents
        self.elements = {z for z in (self.z1, self.z2) if z}

    def compute(self, edges: Edges) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Descriptors (D, d), their weights ``fc`` (D,) and the atom each belongs to (D,)."""
        zi, zj = edges.numbers[edges.senders], edges.numbers[edges.receivers]
        i1, i2 = self._is(zi, self.z1), self._is(zi, self.z2)
        j1, j2 = self._is(zj, self.z1), self._is(zj, self.z2)
        keep = ((i1 & j2) | (i2 & j1)) & (edges.distances < self.cutoff)
        r = edges.distances[keep]
        values = torch.stack([r**exponent for exponent in self.exponents], dim=1)
        weight = coordination(r, self.cutoff, self.width)
        if self.tail_exponent != 0:
            weight = weight * (torch.erf(self.tail_range * r) / r) ** self.tail_exponent
        return values, weight, edges.senders[keep]

    @staticmethod
    def _is(numbers: torch.Tensor, z: int) -> torch.Tensor:
        return torch.ones_like(numbers, dtype=torch.bool) if z == 0 else numbers == z


class Soap:
    """QUIP's ``soap`` descriptor with its default (``EQUISPACED_GAUSS``) radial basis."""

    def __init__(self, args: str, xml_version: int):
        params = parse_args(args)
        for name, default in _SOAP_REFUSED.items():
            value = params.get(name, default)
            same = _flag(value) == _flag(default) if default in ("T", "F") else value.strip() == default
            if not same:
                raise DescriptorNotSupported(f"soap option {name}={value} is not supported")
        basis = params.get("radial_basis", "").strip().upper() or "EQUISPACED_GAUSS"
        if basis not in RADIAL_BASES:
            raise DescriptorNotSupported(f"soap radial_basis={basis} is not supported ({', '.join(RADIAL_BASES)})")
        self.radial_basis = basis
        for name in ("cutoff", "l_max", "n_max"):
            if name not in params:
                raise DescriptorNotSupported(f"soap descriptor without {name}")
        self.cutoff = float(params["cutoff"])
        self.width = float(params.get("cutoff_transition_width", "0.5"))
        self.cutoff_dexp = int(params.get("cutoff_dexp", "0"))
        self.cutoff_scale = float(params.get("cutoff_scale", "1.0"))
        self.cutoff_rate = float(params.get("cutoff_rate", "1.0"))
        self.l_max, self.n_max = int(params["l_max"]), int(params["n_max"])
        sigma = params.get("atom_sigma", params.get("atom_gaussian_width"))
        if sigma is None:
            raise DescriptorNotSupported("soap descriptor without atom_sigma")
        self.atom_sigma = float(sigma)
        self.central_weight = float(params.get("central_weight", "1.0"))
        self.sigma0 = float(params.get("covariance_sigma0", "0.0"))
        self.normalise = _flag(params.get("normalise", params.get("normalize", "T")))
        self.basis_error_exponent = float(params.get("basis_error_exponent", "10.0"))
        n_species = int(params.get("n_species", "1"))
        species = _ints(params.get("species_Z", "0")) if "species_Z" in params else [0]
        if len(species) != n_species:
            raise DescriptorNotSupported(f"soap: species_Z lists {len(species)} elements, n_species={n_species}")
        self.species_z = species
        n_z = int(params.get("n_Z", "1"))
        self.centre_z = _ints(params.get("Z", "0"))
        if len(self.centre_z) != n_z:
            raise DescriptorNotSupported(f"soap: Z lists {len(self.centre_z)} elements, n_Z={n_z}")
        version = int(params.get("xml_version", xml_version))
        if "central_reference_all_species" in params:
            self.central_all = _flag(params["central_reference_all_species"])
        else:  # QUIP's defaults: all species before this version, and always with one species
            self.central_all = version < 1426512068 or n_species == 1
        self.two_l_plus_one = version >= 1423143769
        self.elements = {z for z in species + self.centre_z if z}
        self.n_channels = n_species * self.n_max
        pairs = [(a, b) for a in range(self.n_channels) for b in range(a + 1)]
        self.dimensions = (self.l_max + 1) * len(pairs) + 1
        self._pairs = np.array(pairs, dtype=np.int64)
        self._build_basis()

    def _build_basis(self) -> None:
        """The radial grid ``r_a``, the per-l maps ``T_l`` (grid -> coefficients) and the centre's coefficients."""
        self.alpha = 0.5 / self.atom_sigma**2
        cutoff_basis = self.cutoff + self.atom_sigma * math.sqrt(2.0 * self.basis_error_exponent * math.log(10.0))
        if self.radial_basis == "EQUISPACED_GAUSS":
            self._equispaced_gauss(cutoff_basis)
        else:
            self._fitted_basis(cutoff_basis)

    def _fitted_basis(self, cutoff_basis: float) -> None:
        """QUIP's ``GTO`` and ``POLY`` bases: the radial functions on a grid of ``3 n_max`` points, fitted per l by
        least squares (QUIP's QR solve) to ``B L⁻ᵀ``, B the basis functions on the grid, L the Cholesky factor of their
        overlap."""
        n_max, l_max = self.n_max, self.l_max
        grid = np.arange(3 * n_max) * (cutoff_basis / (3 * n_max))
        index = np.arange(1, n_max + 1, dtype=np.float64)
        maps = []
        for ell in range(l_max + 1):
            if self.radial_basis == "GTO":
                width = (cutoff_basis / n_max) * index
                exponent = -(width**-2.0) * (math.log(0.001) - ell * np.log(width))
                t = ell + 1.5
                u = (exponent[:, None] + exponent[None, :]) * cutoff_basis**2
                overlap = 0.5 * cutoff_basis ** (2 * t) * u ** (-t) * gamma(t) * gammainc(t, u)
                functions = grid[:, None] ** ell * np.exp(-exponent[None, :] * grid[:, None] ** 2)
            else:  # POLY: the same for every l
                norm = np.sqrt(cutoff_basis ** (2 * index + 7) / ((index + 3) * (2 * index + 5) * (2 * index + 7)))
                total = index[:, None] + index[None, :]
                overlap = 2 * cutoff_basis ** (total + 7) / ((5 + total) * (6 + total) * (7 + total))
                overlap = overlap / (norm[:, None] * norm[None, :])
                functions = (cutoff_basis - grid[:, None]) ** (index[None, :] + 2) / norm[None, :]
            lower = cholesky(overlap, lower=True)
            design = functions @ np.linalg.inv(lower.T)
            q, r = np.linalg.qr(design)
            maps.append(np.linalg.solve(r, q.T).T)  # (grid, n): least-squares coefficients of values on the grid
        self.r_basis = grid
        self.transform = np.stack(maps)
        self.centre_coefficients = np.exp(-self.alpha * grid**2) @ self.transform[0]

    def _equispaced_gauss(self, cutoff_basis: float) -> None:
        """QUIP's ``EQUISPACED_GAUSS`` basis: Gaussians at ``r_a``, ``T = C⁻¹ L`` for every l."""
        alpha = self.alpha
        r = np.arange(self.n_max) * (cutoff_basis / self.n_max)
        ri, rj = r[None, :], r[:, None]
        covariance = np.exp(-alpha * (ri - rj) ** 2)
        total = ri + rj
        overlap = (
            np.exp(-alpha * (ri**2 + rj**2)) * math.sqrt(2.0) * alpha**1.5 * total
            + alpha * np.exp(-0.5 * alpha * (ri - rj) ** 2) * math.sqrt(math.pi) * (1.0 + alpha * total**2)
            * (1.0 + erf(math.sqrt(alpha / 2.0) * total))
        ) / math.sqrt(128.0 * alpha**5)  # fmt: skip
        lower = cholesky(overlap, lower=True)
        self.r_basis = r
        self.transform = np.repeat(cho_solve(cho_factor(covariance, lower=False), lower)[None], self.l_max + 1, 0)
        self.centre_coefficients = lower[0]  # the centre's Gaussian sits on r_1 = 0: first row of L

    def compute(self, edges: Edges) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Descriptors (D, d) of every centre atom, weights (all 1) and the centre of each."""
        numbers, dtype, device = edges.numbers, edges.vectors.dtype, edges.vectors.device
        if 0 in self.centre_z:
            centres = torch.arange(edges.n_atoms, device=device)
        else:
            centres = torch.nonzero(torch.isin(numbers, torch.tensor(self.centre_z, device=device))).flatten()
        n_species, n_lm = len(self.species_z), (self.l_max + 1) ** 2
        slot = torch.full((edges.n_atoms,), -1, dtype=torch.int64, device=device)
        slot[centres] = torch.arange(centres.numel(), device=device)
        species_of = self._species_index(numbers)
        keep = (slot[edges.senders] >= 0) & (edges.distances < self.cutoff) & (species_of[edges.receivers] >= 0)
        r, vectors = edges.distances[keep], edges.vectors[keep]
        row = slot[edges.senders[keep]] * n_species + species_of[edges.receivers[keep]]

        weight = coordination(r, self.cutoff, self.width) * self._radial_decay(r)
        transform = torch.as_tensor(self.transform, dtype=dtype, device=device)
        radial = torch.einsum("elg,lgn->eln", self._radial_functions(r), transform) * weight[:, None, None]
        harmonics = self._harmonics(vectors / r[:, None])  # (E, lm)
        l_of_lm = torch.tensor([ell for ell in range(self.l_max + 1) for _ in range(2 * ell + 1)], device=device)
        terms = radial[:, l_of_lm, :] * harmonics[:, :, None]  # (E, lm, n)
        density = vectors.new_zeros((centres.numel() * n_species, n_lm, self.n_max)).index_add(0, row, terms)
        density = density.reshape(centres.numel(), n_species, n_lm, self.n_max).transpose(1, 2)
        density = density.reshape(centres.numel(), n_lm, self.n_channels)
        density = density + self._centre_density(numbers[centres], dtype)

        blocks = []
        for ell in range(self.l_max + 1):
            block = density[:, ell * ell : (ell + 1) ** 2, :]
            power = block.transpose(1, 2) @ block  # (D, K, K): Σ_m c_a c_b
            if self.two_l_plus_one:
                power = power / math.sqrt(2 * ell + 1)
            blocks.append(power[:, self._pairs[:, 0], self._pairs[:, 1]])
        spectrum = torch.stack(blocks, dim=2)  # (D, pairs, l): QUIP's order, l fastest
        off_diagonal = torch.as_tensor(self._pairs[:, 0] != self._pairs[:, 1], device=device)
        spectrum = torch.where(off_diagonal[None, :, None], spectrum * math.sqrt(2.0), spectrum)
        spectrum = spectrum.reshape(centres.numel(), -1)
        if self.normalise:
            spectrum = spectrum / torch.linalg.vector_norm(spectrum, dim=1, keepdim=True)
        last = spectrum.new_full((centres.numel(), 1), self.sigma0)
        return torch.cat([spectrum, last], dim=1), spectrum.new_ones(centres.numel()), centres

    def _species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """Species index (0-based) of each atom as a neighbour, -1 for none (a 0 in species_Z takes every atom)."""
        index = torch.full_like(numbers, -1)
        for position, z in enumerate(self.species_z):
            if z == 0:
                return torch.zeros_like(numbers)
            index = torch.where(numbers == z, position, index)
        return index

    def _centre_density(self, centre_numbers: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(D, lm, K): the centre's own Gaussian, in l = 0, for the species it is a reference of."""
        device = centre_numbers.device
        per_species = []
        for z in self.species_z:
            if self.central_all or z == 0:
                applies = torch.ones_like(centre_numbers, dtype=dtype)
            else:
                applies = (centre_numbers == z).to(dtype)
            per_species.append(applies)
        applies = torch.stack(per_species, dim=1)  # (D, S)
        coefficients = torch.as_tensor(self.centre_coefficients, dtype=dtype, device=device)
        value = self.central_weight / math.sqrt(4.0 * math.pi) * applies[:, :, None] * coefficients[None, None, :]
        centre = torch.zeros((centre_numbers.numel(), (self.l_max + 1) ** 2, self.n_channels), dtype=dtype,
                             device=device)  # fmt: skip
        centre[:, 0, :] = value.reshape(centre_numbers.numel(), -1)
        return centre

    def _radial_decay(self, r: torch.Tensor) -> torch.Tensor:
        if self.cutoff_dexp <= 0:
            return torch.ones_like(r)
        rate = self.cutoff_rate
        norm = 1.0 if rate == 0.0 else rate / (1.0 + rate)
        return norm * (1.0 + rate) / (rate + (r / self.cutoff_scale) ** self.cutoff_dexp)

    def _radial_functions(self, r: torch.Tensor) -> torch.Tensor:
        """(E, l_max + 1, n_max): exp(-α(r² + r_a²)) i_l(2α r r_a), by QUIP's upward recurrence."""
        alpha, l_max = self.alpha, self.l_max
        r_basis = torch.as_tensor(self.r_basis, dtype=r.dtype, device=r.device)
        at_origin = r_basis == 0.0
        safe_basis = torch.where(at_origin, torch.ones_like(r_basis), r_basis)
        rr = r[:, None]
        argument = 2.0 * alpha * rr * safe_basis[None, :]
        exp_p = torch.exp(-alpha * (rr + safe_basis) ** 2)
        exp_m = torch.exp(-alpha * (rr - safe_basis) ** 2)
        previous = 0.5 * (exp_m + exp_p) / argument  # i_{-1}
        current = 0.5 * (exp_m - exp_p) / argument  # i_0
        values = [current]
        for ell in range(1, l_max + 1):
            previous, current = current, previous - (2 * ell - 1) * current / argument
            values.append(current)
        radial = torch.stack(values, dim=1)  # (E, l, a)
        origin = torch.zeros_like(radial)
        origin[:, 0, :] = torch.exp(-alpha * rr**2).expand(-1, r_basis.numel())
        return torch.where(at_origin[None, None, :], origin, radial)

    def _harmonics(self, unit: torch.Tensor) -> torch.Tensor:
        """(E, (l_max + 1)²) real orthonormal spherical harmonics, block l at rows l² .. (l + 1)² - 1."""
        complex_positive = spherical_harmonics(unit, self.l_max)  # sqrt(4π) Y_lm, m >= 0, (lm+, 2, E)
        scale = 1.0 / math.sqrt(4.0 * math.pi)
        columns = []
        for ell in range(self.l_max + 1):
            base = ell * (ell + 1) // 2
            columns.append(complex_positive[base, 0] * scale)
            for m in range(1, ell + 1):
                value = complex_positive[base + m] * (scale * math.sqrt(2.0))
                columns.extend([value[0], value[1]])
        return torch.stack(columns, dim=1)


def make_descriptor(args: str, xml_version: int) -> Distance2b | Soap:
    """The descriptor of a ``gpCoordinates``' argument string; other kinds are refused by name."""
    kind = args.split(maxsplit=1)[0] if args.strip() else ""
    if kind == "distance_2b":
        return Distance2b(args)
    if kind == "soap":
        return Soap(args, xml_version)
    raise DescriptorNotSupported(f"descriptor {kind!r} is not supported (supported: distance_2b, soap)")
