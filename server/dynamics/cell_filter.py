"""ASE's FrechetCellFilter for many structures at once: atoms and cell as one set of generalised coordinates.

A structure with a relaxed cell has its atom rows ``u`` (positions in the undeformed starting cell) and three cell
rows ``X = c · log F``, where ``F`` is the deformation gradient from the starting cell and ``c`` the number of atoms
(ASE's ``exp_cell_factor``). Positions are ``u Fᵀ`` and the cell ``cell₀ Fᵀ``. The generalised force on ``u`` is
``f F``; on ``X`` it is the Fréchet derivative of the matrix exponential applied to the virial, divided by ``c``,
as in ``ase.filters.FrechetCellFilter``. ASE evaluates that derivative with nine ``expm_frechet`` calls per
structure; here it is one batched ``expm`` of 6×6 block matrices, using the adjoint identity
``⟨L(A, E), G⟩ = ⟨E, L(Aᵀ, G)⟩``. Structures without a relaxed cell have atom rows only (``F = 1``).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import expm


def deformation(log_strain: np.ndarray) -> np.ndarray:
    """Deformation gradients ``F = expm(X / c)`` from the already divided logarithms (k, 3, 3)."""
    if len(log_strain) == 0:
        return np.zeros((0, 3, 3))
    return expm(log_strain)


def cell_forces(
    log_strain: np.ndarray,
    deform: np.ndarray,
    stress: np.ndarray,
    volume: np.ndarray,
    hydrostatic: np.ndarray,
    pressure: np.ndarray,
    factor: np.ndarray,
) -> np.ndarray:
    """Generalised forces on the cell rows of k structures (k, 3, 3).

    ``log_strain`` is log F (k, 3, 3), ``deform`` F itself, ``stress`` the Cauchy stress in ASE's sign (k, 3, 3),
    ``volume`` the current volumes, ``hydrostatic`` a boolean mask, ``pressure`` the applied pressures and
    ``factor`` the exp_cell_factors.
    """
    if len(log_strain) == 0:
        return np.zeros((0, 3, 3))
    identity = np.eye(3)
    virial = -volume[:, None, None] * (stress + pressure[:, None, None] * identity)
    trace = np.trace(virial, axis1=1, axis2=2)
    virial = np.where(hydrostatic[:, None, None], (trace / 3.0)[:, None, None] * identity, virial)
    unit_cell_gradient = virial @ np.linalg.inv(np.swapaxes(deform, 1, 2))
    return _expm_frechet_adjoint(log_strain, unit_cell_gradient) / factor[:, None, None]


def _expm_frechet_adjoint(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``M[μν] = ⟨L(A, e_μν), G⟩`` for each matrix pair: the upper-right block of ``expm([[Aᵀ, G], [0, Aᵀ]])``."""
    k = len(a)
    block = np.zeros((k, 6, 6))
    a_t = np.swapaxes(a, 1, 2)
    block[:, :3, :3] = a_t
    block[:, 3:, 3:] = a_t
    block[:, :3, 3:] = g
    return expm(block)[:, :3, 3:]


def max_row_norm(rows: np.ndarray, owner: np.ndarray, k: int) -> np.ndarray:
    """The largest row norm of each structure's rows (its ``fmax`` in ASE's sense)."""
    result = np.zeros(k)
    with np.errstate(invalid="ignore"):  # NaN rows stay NaN: the caller flags them
        np.maximum.at(result, owner, np.linalg.norm(rows, axis=1))
    return result
