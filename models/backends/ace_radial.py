"""The one-dimensional pieces of an ACE potential, in torch: radial bases, core repulsion, embeddings, pair tables.

Our own implementation of the functions pacemaker's evaluator uses (``ace_radial.cpp``, ``ships_radial.cpp``,
``ace_abstract_basis.cpp`` in python-ace; see ``../shared/fixtures/ace/FORMAT_AND_ALGORITHM.md``), written so that
autograd gives forces and stress and a whole batch of edges is evaluated at once. pacemaker never evaluates these
functions at run time: it tabulates g_k, R_nl and the core term on a ``deltaSplineBins`` (0.001 Å) grid and
interpolates cubic Hermite segments. :class:`RadialSpline` builds the same table from the exact functions here, so
the default evaluation agrees with pacemaker and LAMMPS to rounding; evaluating the exact functions instead
(``radial: exact``) differs by the table's interpolation error (~1e-10 eV/atom, up to ~5e-5 eV/Å in forces where
the core repulsion is steep, measured in the tests). Values that a branch does not select are computed on safe
inputs, so no NaN reaches a gradient.
"""

from __future__ import annotations

import math

import torch

from .ace_format import Bond, Embedding

#: e^2 / (4 pi eps0) in eV Å, as used by pacemaker's ZBL.
COULOMB_EV_ANGSTROM = 14.399645351950543
_ZBL_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
_ZBL_EXPONENTS = (-3.19980, -0.94229, -0.40290, -0.20162)


def cutoff_poly(r: torch.Tensor, r_in: float, delta: float) -> torch.Tensor:
    """Smooth step: 1 for ``r <= r_in - delta``, 0 for ``r >= r_in``, a quintic polynomial in between."""
    if delta <= 0:
        return (r <= r_in).to(r.dtype)
    t = ((r - r_in + delta) / delta).clamp(0.0, 1.0)
    x = 1.0 - 2.0 * t
    return 0.5 + 3.75 * (x / 4.0 - x**3 / 6.0 + x**5 / 20.0)


def chebyshev(x: torch.Tensor, n_max: int) -> torch.Tensor:
    """T_0(x) .. T_{n_max}(x) stacked on a new last axis."""
    values = [torch.ones_like(x), x]
    for _ in range(2, n_max + 1):
        values.append(2.0 * x * values[-1] - values[-2])
    return torch.stack(values[: n_max + 1], dim=-1)


def radial_basis(bond: Bond, r: torch.Tensor, inner_cutoff_type: str) -> torch.Tensor:
    """g_k(r), k = 0..nradbase-1, of ``bond`` for distances ``r`` (all below ``bond.rcut``): shape (E, nradbase)."""
    if bond.julia is not None:
        return julia_basis(bond, r)
    rc, n = bond.rcut, bond.nradbase
    r_in, delta_in = bond.r_in, bond.delta_in
    if inner_cutoff_type == "zbl":  # pacemaker's radial basis ignores the ZBL inner cutoff (a flag, not a distance)
        r_in = 1.0 if delta_in == 0 else 0.0
    inside = (r > r_in - delta_in) & (r < rc)
    rs = torch.where(inside, r, torch.full_like(r, 0.5 * rc))
    if bond.radial_basis == "ChebExpCos":
        lam = bond.radparameter
        y1, y2 = torch.exp(-lam * rs / rc), math.exp(-lam)
        x = 1.0 - 2.0 * (y1 - y2) / (1.0 - y2)
        cheb = chebyshev(x, n)
        g = torch.cat([torch.ones_like(x)[:, None], 0.5 - 0.5 * cheb[:, 1:n]], dim=1)
        g = g * (0.5 * (1.0 + torch.cos(math.pi * rs / rc)))[:, None]
        if bond.dcut > 0:
            tail = 0.5 * (1.0 + torch.cos(math.pi * (rs - rc + bond.dcut) / bond.dcut))
            g = g * torch.where(rs > rc - bond.dcut, tail, torch.ones_like(tail))[:, None]
    elif bond.radial_basis in ("ChebPow", "ChebLinear"):
        y = 1.0 - rs / rc
        if bond.radial_basis == "ChebPow":
            y = y**bond.radparameter
            x = 2.0 * (1.0 - y) - 1.0
        else:
            x = y
        g = 0.5 - 0.5 * chebyshev(x, n)[:, 1 : n + 1]
    elif bond.radial_basis == "SBessel":
        g = simplified_bessel(rs, rc, n)
    else:  # the reader rejects other names
        raise ValueError(f"unsupported radial basis {bond.radial_basis!r}")
    if inner_cutoff_type in ("distance", "zbl"):
        g = g * (1.0 - cutoff_poly(rs, r_in, delta_in))[:, None]
    return torch.where(inside[:, None], g, torch.zeros_like(g))


def simplified_bessel(r: torch.Tensor, rc: float, n_basis: int) -> torch.Tensor:
    """Orthogonalised simplified spherical Bessel functions (Kocer et al.), as in pacemaker's SBessel basis."""

    def sinc(z: torch.Tensor) -> torch.Tensor:
        safe = torch.where(z == 0, torch.ones_like(z), z)
        return torch.where(z == 0, torch.ones_like(z), torch.sin(safe) / safe)

    def f(n: int) -> torch.Tensor:
        scale = (
            (-1) ** n * math.sqrt(2) * math.pi / rc**1.5 * (n + 1) * (n + 2) / math.sqrt((n + 1) ** 2 + (n + 2) ** 2)
        )
        return scale * (sinc(r * (n + 1) * math.pi / rc) + sinc(r * (n + 2) * math.pi / rc))

    values = [f(0)]
    d_prev = 1.0
    for n in range(1, n_basis):
        e_n = n**2 * (n + 2) ** 2 / (4 * (n + 1) ** 4 + 1)
        d_n = 1.0 - e_n / d_prev
        values.append((f(n) + math.sqrt(e_n / d_prev) * values[-1]) / math.sqrt(d_n))
        d_prev = d_n
    return torch.stack(values, dim=-1)


def julia_basis(bond: Bond, r: torch.Tensor) -> torch.Tensor:
    """ACE.jl's radial basis P_n(r), n = 0..maxn-1 (it serves as both g_k and R_nl); zero beyond ``rcut``."""
    jl = bond.julia
    inside = r < bond.rcut
    rs = torch.where(inside, r, torch.full_like(r, 0.5 * bond.rcut))
    x = ((1.0 + jl.r0) / (1.0 + rs)) ** jl.p
    outside_window = ((x < jl.xl) & (jl.pl > 0)) | ((x > jl.xr) & (jl.pr > 0))
    envelope = torch.where(outside_window, torch.zeros_like(x), (x - jl.xl) ** jl.pl * (x - jl.xr) ** jl.pr)
    values = [jl.a[0] * envelope]
    if len(jl.a) > 1:
        values.append((jl.a[1] * x + jl.b[1]) * values[0])
    for n in range(2, len(jl.a)):
        values.append((jl.a[n] * x + jl.b[n]) * values[-1] + jl.c[n] * values[-2])
    g = torch.stack(values, dim=-1)
    return torch.where(inside[:, None], g, torch.zeros_like(g))


def radial_functions(bond: Bond, g: torch.Tensor, crad: torch.Tensor | None) -> torch.Tensor:
    """R_nl = sum_k crad[n, l, k] g_k: shape (E, nradmax, lmax + 1); ACE.jl's R_nl is P_n for every l."""
    if crad is None:
        return g[:, :, None].expand(-1, -1, bond.lmax + 1)
    return torch.einsum("nlk,ek->enl", crad, g)


def core_repulsion(bond: Bond, r: torch.Tensor, inner_cutoff_type: str) -> torch.Tensor:
    """Per-edge core term ``f_core(r)`` of the density / distance regimes (zero where prehc is zero)."""
    pre, lam = abs(bond.prehc), abs(bond.lambdahc)
    if pre == 0:
        return torch.zeros_like(r)
    inside = (lam * r * r < 50.0) & (r < bond.rcut)
    rs = torch.where(inside, r, torch.ones_like(r))
    core = pre * torch.exp(-lam * rs * rs) / rs * 0.5 * (1.0 + torch.cos(math.pi * rs / bond.rcut))
    if inner_cutoff_type == "distance":
        core = core * cutoff_poly(rs, bond.r_in, bond.delta_in)
    return torch.where(inside, core, torch.zeros_like(core))


def zbl(bond: Bond, r: torch.Tensor, z_i: int, z_j: int) -> torch.Tensor:
    """Half of the ZBL pair energy per edge, with pacemaker's smooth switch-off between rcut - dcut and rcut."""
    cut_out, cut_in = bond.rcut, bond.rcut - bond.dcut
    a = 0.46850 / (z_i**0.23 + z_j**0.23)
    inside = r < cut_out
    rs = torch.where(inside, r, torch.full_like(r, 0.5 * cut_out))

    def screened(d):  # phi(d/a)/d and its first two derivatives; d a tensor or a float
        exp = torch.exp if isinstance(d, torch.Tensor) else math.exp
        terms = [(c, e / a, exp(e * d / a)) for c, e in zip(_ZBL_COEFFICIENTS, _ZBL_EXPONENTS, strict=True)]
        phi = sum(c * x for c, _, x in terms)
        dphi = sum(c * k * x for c, k, x in terms)
        d2phi = sum(c * k * k * x for c, k, x in terms)
        return phi / d, dphi / d - phi / d**2, d2phi / d - 2 * dphi / d**2 + 2 * phi / d**3

    energy = screened(rs)[0]
    e_c, de_c, d2e_c = screened(cut_out)
    width = cut_out - cut_in
    coef_a = (-3 * de_c + width * d2e_c) / width**2
    coef_b = (2 * de_c - width * d2e_c) / width**3
    coef_c = -e_c + 0.5 * width * de_c - width**2 / 12.0 * d2e_c
    t = (rs - cut_in).clamp(min=0.0)
    shift = coef_a / 3 * t**3 + coef_b / 4 * t**4 + coef_c
    pair = abs(bond.prehc) * COULOMB_EV_ANGSTROM / 2 * z_i * z_j * (energy + shift)
    pair = pair * cutoff_poly(rs, cut_out, width)
    return torch.where(inside, pair, torch.zeros_like(pair))


def embedding_energy(embedding: Embedding, rho: torch.Tensor) -> torch.Tensor:
    """``sum_p w_p F(rho_p; m_p)`` for the densities ``rho`` (n_atoms, >= ndensity) of one species."""
    total = torch.zeros(rho.shape[0], dtype=rho.dtype, device=rho.device)
    for p in range(embedding.ndensity):
        weight, exponent = embedding.fs_parameters[2 * p], embedding.fs_parameters[2 * p + 1]
        if embedding.npoti == "FinnisSinclair":
            value = finnis_sinclair(rho[:, p], exponent)
        else:
            value = finnis_sinclair_shifted_scaled(rho[:, p], exponent)
        total = total + weight * value
    return total


def finnis_sinclair(x: torch.Tensor, m: float, w: float = 1.0e6, eps: float = 1e-10) -> torch.Tensor:
    """``sign(x) [(1 - g)|x|^m + w^(1-m) g |x|]``, ``g = exp(-(w|x|)^3)``: |x|^m made linear near zero."""
    slope = (1.0 / w) ** (m - 1.0)
    big = x.abs() > eps
    a = torch.where(big, x.abs(), torch.ones_like(x))
    w3x3 = (w * a) ** 3
    g = torch.where(w3x3 > 30.0, torch.zeros_like(a), torch.exp(-w3x3.clamp(max=30.0)))
    value = torch.sign(x) * ((1.0 - g) * a**m + slope * g * a)
    return torch.where(big, value, slope * x)


def finnis_sinclair_shifted_scaled(rho: torch.Tensor, m: float) -> torch.Tensor:
    """``sign(rho) [(x_off + |rho|)^m - y_off]`` with offsets that make it smooth at zero; ``rho`` for m = 1."""
    if abs(m - 1.0) < 1e-10:
        return rho
    a = rho.abs()
    decay = torch.exp(-a)
    nx = 1.0 / m
    x_off = nx ** (nx / (1.0 - nx)) * decay
    y_off = nx ** (1.0 / (1.0 - nx)) * decay
    return torch.sign(rho) * ((x_off + a) ** m - y_off)


def hermite_table(r: torch.Tensor, grid_start: float, step: float, energy: torch.Tensor, slope: torch.Tensor):
    """Cubic Hermite interpolation of tabulated values and derivatives on a uniform grid; zero past its end."""
    n = energy.shape[0]
    position = ((r - grid_start) / step).clamp(0.0, n - 1 - 1e-12)
    index = position.floor().long().clamp(max=n - 2)
    t = position - index
    e0, e1 = energy[index], energy[index + 1]
    d0, d1 = slope[index] * step, slope[index + 1] * step
    t2, t3 = t * t, t * t * t
    value = (2 * t3 - 3 * t2 + 1) * e0 + (t3 - 2 * t2 + t) * d0 + (-2 * t3 + 3 * t2) * e1 + (t3 - t2) * d1
    return torch.where(r < grid_start + (n - 1) * step, value, torch.zeros_like(value))


class RadialSpline:
    """pacemaker's look-up table of one bond's radial functions: cubic Hermite segments on a uniform grid.

    Built like ``SplineInterpolator::setupSplines``: ``nlut = int(rcut / deltaSplineBins)`` segments of width
    ``h = rcut / nlut``; segment n runs from node n to node n + 1 and matches the exact values and derivatives at
    both ends (the node at ``rcut`` is forced to zero). Evaluating it reproduces pacemaker's numbers to rounding.
    """

    def __init__(self, functions, rcut: float, delta_bins: float, dtype: torch.dtype, device: torch.device):
        """``functions(r)`` maps distances (n,) to exact values (n, F); derivatives come from forward-mode AD."""
        self.nlut = int(rcut / delta_bins)
        self.scale = self.nlut / rcut
        nodes = torch.arange(1, self.nlut + 1, dtype=torch.float64) * (1.0 / self.scale)
        values, slopes = torch.func.jvp(functions, (nodes,), (torch.ones_like(nodes),))
        values, slopes = values.detach(), slopes.detach() / self.scale  # slopes per grid step
        zero = torch.zeros_like(values[:1])
        f0, d0 = torch.cat([values[:1], values]), torch.cat([slopes[:1], slopes])  # row n = node n (row 0 unused)
        f1, d1 = torch.cat([values, zero, zero])[: self.nlut + 1], torch.cat([slopes, zero, zero])[: self.nlut + 1]
        c2 = 3.0 * (f1 - f0) - d1 - 2.0 * d0
        c3 = -2.0 * (f1 - f0) + d1 + d0
        self.coefficients = torch.stack([f0, d0, c2, c3], dim=-1).to(dtype=dtype, device=device)  # (nlut+1, F, 4)

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        """Interpolated values (E, F); zero at and beyond ``rcut``."""
        x = r * self.scale
        segment = x.detach().floor().long().clamp(0, self.nlut)
        w = (x - segment).unsqueeze(-1)
        c = self.coefficients[segment]
        value = c[..., 0] + w * (c[..., 1] + w * (c[..., 2] + w * c[..., 3]))
        return torch.where((segment < self.nlut).unsqueeze(-1), value, torch.zeros_like(value))
