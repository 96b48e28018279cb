"""Active sets: MaxVol row selection, extrapolation grades, and the D-optimal choice of structures for DFT.

Both MTP's extrapolation grade and ACE's γ are the same measure (Podryabinkin & Shapeev 2017; Lysogorskiy et al.
2023): each structure (MTP configuration mode) or atom (MTP neighbourhood mode, ACE) has a row ``b`` of basis
values; the active set is the square submatrix ``A`` of training rows with near-maximal volume (MaxVol); the grade
of a row is ``max |b A⁻¹|``, above 1 when ``b`` lies outside the region the active set spans.

Hand-written (numpy and scipy's LAPACK wrappers only) because the reference codes keep MaxVol inside their own
packages: motep (MTP; pivoted-QR start, swaps while a coefficient exceeds 1 + 1e-9) and python-ace (ACE; LU start,
swaps while one exceeds 1.01, at most 300). :func:`maxvol` takes the start and the tolerance, so it reproduces the
choice of either given the same matrix. Torch-free, so the server's front end may import :class:`Selection`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg

__all__ = [
    "ActiveSet",
    "Selection",
    "lu_start",
    "maxvol",
    "qr_start",
    "select_rows",
]


def qr_start(matrix: np.ndarray) -> np.ndarray:
    """The first rows a column-pivoted QR of ``matrix.T`` picks: motep's start."""
    return scipy.linalg.qr(matrix.T, pivoting=True, mode="r")[1][: matrix.shape[1]]


def lu_start(matrix: np.ndarray) -> np.ndarray:
    """The rows a partially pivoted LU of ``matrix`` moves to the top: python-ace's start."""
    _, pivots = scipy.linalg.lu_factor(matrix, check_finite=False)
    order = np.arange(matrix.shape[0])
    for row, pivot in enumerate(pivots):
        order[[row, pivot]] = order[[pivot, row]]
    return order[: matrix.shape[1]]


def maxvol(matrix: np.ndarray, start: np.ndarray, tolerance: float, max_swaps: int = 100_000) -> np.ndarray:
    """Rows of ``matrix`` (N, r), N >= r, whose square submatrix has (locally) maximal volume.

    From the ``start`` rows, the row with the largest coefficient ``|c|`` of ``C = matrix @ inv(matrix[rows])``
    replaces the row it would expand, while ``|c| > tolerance`` (a swap multiplies the volume by ``|c|``). ``C`` is
    updated by Sherman–Morrison. ``C`` starts as a least-squares solution, as motep's does: the matrix of an MTP's
    parameter derivatives has a null space (its parameterisation is redundant), and a plain solve would amplify
    rounding there. Returns the rows in the order of the columns they stand for.
    """
    rows = np.array(start, dtype=np.int64)
    n_rows, rank = matrix.shape
    if n_rows < rank:
        raise ValueError(f"MaxVol needs at least as many rows as columns, got a {n_rows}×{rank} matrix")
    coefficients = np.linalg.lstsq(matrix[rows].T, matrix.T, rcond=None)[0].T
    for _ in range(max_swaps):
        row, column = np.unravel_index(np.argmax(np.abs(coefficients)), coefficients.shape)
        pivot = coefficients[row, column]
        if abs(pivot) <= tolerance:
            break
        rows[column] = row
        update_row = coefficients[row].copy()
        update_row[column] -= 1.0
        coefficients -= np.outer(coefficients[:, column], update_row) / pivot
    return rows


@dataclass
class ActiveSet:
    """The active set of one group of rows (one species, or all): its square matrix ``A`` and the ``A⁻¹`` that
    grades rows, ``max |b A⁻¹|``.

    python-ace's ``.asi`` files store ``A⁻¹`` (``pinv(A)``). Built from ``A`` here, ``A⁻¹`` is motep's least-squares
    solution of ``c A = b`` for every unit row (LAPACK's gelsd, singular values below ``eps · r`` of the largest
    dropped): an MTP's ``A`` is singular by construction (its parameters are redundant, each moment being
    homogeneous in the radial coefficients), and the grades of the remaining, ill-conditioned directions agree with
    motep's to about 1e-9 only when taken the same way (a plain pinv differs by ~3e-8).
    """

    matrix: np.ndarray  # (r, r)
    inverse: np.ndarray  # (r, r)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> ActiveSet:
        identity = np.eye(matrix.shape[0])
        return cls(matrix=matrix, inverse=np.linalg.lstsq(matrix.T, identity, rcond=None)[0].T)

    @classmethod
    def from_inverse(cls, inverse: np.ndarray) -> ActiveSet:
        return cls(matrix=np.linalg.pinv(inverse), inverse=inverse)

    def grades(self, rows: np.ndarray) -> np.ndarray:
        """(n,) ``max |b A⁻¹|`` of each row ``b`` of ``rows`` (n, r)."""
        if rows.shape[0] == 0:
            return np.zeros(0)
        return np.abs(rows @ self.inverse).max(axis=1)


@dataclass
class Selection:
    """Candidates graded against an active set, and those picked for DFT."""

    #: (n,) each candidate's figure: its grade (MTP configuration mode) or its largest per-atom grade or γ.
    grades: np.ndarray
    #: Per-atom grades or γ of each candidate, where the measure has them.
    per_atom: list[np.ndarray] | None
    #: Candidates whose figure exceeds the threshold, ascending.
    above: list[int]
    #: The D-optimal subset (at most ``max_count``): candidates whose rows enter the active set when MaxVol runs over
    #: the active set's rows and the candidates' rows; those with the most rows entering first, ties by order.
    selected: list[int]


def select_rows(
    groups: Sequence[tuple[np.ndarray, np.ndarray, ActiveSet]],
    max_count: int,
    *,
    start: str,
    tolerance: float,
    max_swaps: int,
) -> list[int]:
    """Candidates (indices) chosen by MaxVol over the active set's rows and the candidates' rows, at most
    ``max_count`` (all when negative).

    ``groups``: per group (species), the candidates' rows (m, r), the candidate each row belongs to (m,), and the
    active set. ``start`` is ``"qr"`` (motep) or ``"lu"`` (python-ace); the active set's rows come after the
    candidates', as python-ace stacks them. A candidate counts once per row of it that enters.
    """
    starts = {"qr": qr_start, "lu": lu_start}
    counts: Counter[int] = Counter()
    for rows, owners, active_set in groups:
        if rows.shape[0] == 0:
            continue
        stacked = np.vstack([rows, active_set.matrix])
        chosen = maxvol(stacked, starts[start](stacked), tolerance, max_swaps)
        counts.update(int(owners[row]) for row in chosen if row < rows.shape[0])
    ranked = [index for index, _ in counts.most_common()]
    return ranked if max_count < 0 else ranked[:max_count]
