"""ASE's FrechetCellFilter for many structures at once, in torch: atoms and cell as one set of generalised coordinates.

A structure with a relaxed cell has its atom rows ``u`` (positions in the undeformed starting cell) and three cell
rows ``X = c · log F``, where ``F`` is the deformation gradient from the starting cell and ``c`` the number of atoms
(ASE's ``exp_cell_factor``). Positions are ``u Fᵀ`` and the cell ``cell₀ Fᵀ``. The generalised force on ``u`` is
``f F``; on ``X`` it is the Fréchet derivative of the matrix exponential applied to the virial, divided by ``c``,
as in ``ase.filters.FrechetCellFilter``. ASE evaluates that derivative with nine ``expm_frechet`` calls per
structure; here it is one batched ``torch.linalg.matrix_exp`` of 6×6 block matrices, using the adjoint identity
``⟨L(A, E), G⟩ = ⟨E, L(Aᵀ, G)⟩``. Structures without a relaxed cell have atom rows only (``F = 1``).
"""

from __future__ import annotations

import torch


def deformation(log_strain: torch.Tensor) -> torch.Tensor:
    """Deformation gradients ``F = expm(X / c)`` from the already divided logarithms (k, 3, 3)."""
    return torch.linalg.matrix_exp(torch.as_tensor(log_strain, dtype=torch.float64))


def cell_forces(
    log_strain: torch.Tensor,
    deform: torch.Tensor,
    stress: torch.Tensor,
    volume: torch.Tensor,
    hydrostatic: torch.Tensor,
    pressure: torch.Tensor,
    factor: torch.Tensor,
) -> torch.Tensor:
    """Generalised forces on the cell rows of k structures (k, 3, 3).

    ``log_strain`` is log F (k, 3, 3), ``deform`` F itself, ``stress`` the Cauchy stress in ASE's sign (k, 3, 3),
    ``volume`` the current volumes, ``hydrostatic`` a boolean mask, ``pressure`` the applied pressures and
    ``factor`` the exp_cell_factors.
    """
    identity = torch.eye(3, dtype=stress.dtype, device=stress.device)
    virial = -volume[:, None, None] * (stress + pressure[:, None, None] * identity)
    trace = virial.diagonal(dim1=1, dim2=2).sum(dim=1)
    virial = torch.where(hydrostatic[:, None, None], (trace / 3.0)[:, None, None] * identity, virial)
    unit_cell_gradient = virial @ torch.linalg.inv(deform.transpose(1, 2))
    return _expm_frechet_adjoint(log_strain, unit_cell_gradient) / factor[:, None, None]


def _expm_frechet_adjoint(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``M[μν] = ⟨L(A, e_μν), G⟩`` for each matrix pair: the upper-right block of ``expm([[Aᵀ, G], [0, Aᵀ]])``."""
    a, g = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(g, dtype=torch.float64)
    a_t = a.transpose(1, 2)
    top = torch.cat([a_t, g], dim=2)
    bottom = torch.cat([torch.zeros_like(a_t), a_t], dim=2)
    return torch.linalg.matrix_exp(torch.cat([top, bottom], dim=1))[:, :3, 3:]


def max_row_norm(rows: torch.Tensor, owner: torch.Tensor, k: int) -> torch.Tensor:
    """The largest row norm of each structure's rows (its ``fmax`` in ASE's sense); NaN where a row is not finite."""
    norm = torch.linalg.vector_norm(rows, dim=1)
    finite = torch.isfinite(norm)
    largest = norm.new_zeros(k).scatter_reduce(0, owner, torch.where(finite, norm, 0.0), "amax")
    broken = norm.new_zeros(k).index_add_(0, owner, (~finite).to(norm.dtype)) > 0
    return torch.where(broken, torch.nan, largest)
