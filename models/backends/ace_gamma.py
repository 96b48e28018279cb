"""ACE extrapolation grade γ against a pacemaker active set (``.asi``), per atom, and the D-optimal choice for DFT.

Each atom's row is its linear B-projection, as python-ace's B-basis evaluator forms it: the value of every B-basis
function of its species, rank-1 functions first (``sum_j g_n(r_ij)``), then the higher ranks
(``sum_ms gen_cg · Re prod_t A[mu_t, n_t, l_t, m_t]``); ordered by rank, then by neighbour species, then as in
the potential file. γ of the atom is ``max |b A⁻¹|`` with ``A⁻¹`` its species' matrix in the ``.asi`` file
(``pace_activeset``: a NumPy ``.npz`` keyed by element). The atomic base A is the potential's own
(:meth:`AcePotential.atomic_base`), so γ costs one more pass of the ACE evaluation, without autograd. Hand-written
because python-ace evaluates one atom at a time on the CPU; the tests compare γ and the selection with it.

Card options (ACE family, B-basis ``.yaml`` potential): ``active_set`` (the ``.asi`` file in the model directory)
with ``active_set_sha256``. Only linear active sets are read (``pace_activeset`` without ``--full``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..active_sets import ActiveSet, Selection, select_rows
from ..cards import CardError
from ..graph import BatchedGraph, build_graph
from ..prediction import Uncertainty
from ..system import AtomicSystem

#: pace_select's MaxVol: stop once no coefficient exceeds 1.01, at most 300 swaps.
TOLERANCE = 1.01
MAX_SWAPS = 300


@dataclass
class ProjectionTable:
    """How to form the B-projections of the atoms of one species from the atomic base."""

    rank1: torch.Tensor  # (n1,) rows of the rank-1 base
    #: per rank >= 2: rows of A per term (terms, rank), the projection column of each term (terms,), its gen_cg
    products: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    size: int


@dataclass
class AceGammaGrader:
    """The active sets of an ACE potential, one per species, and the tables that form its rows."""

    active_sets: dict[int, ActiveSet]
    tables: dict[int, ProjectionTable]

    @classmethod
    def from_file(cls, potential, path: Path) -> AceGammaGrader:
        """Read ``path`` (a ``.asi`` file) for ``potential``, checking it against the potential's basis."""
        name = potential.card.name
        tables = projection_tables(potential)
        try:
            with np.load(path) as archive:
                inverses = {key: np.asarray(archive[key], dtype=np.float64) for key in archive.files}
        except (OSError, ValueError) as error:
            raise CardError(f"{name}: {path.name} is not a pacemaker active set (.npz): {error}") from error
        elements = potential.model.elements
        if sorted(inverses) != sorted(elements):
            raise CardError(f"{name}: {path.name} has active sets for {sorted(inverses)}, the potential {elements}")
        active_sets = {}
        for element, inverse in inverses.items():
            mu = elements.index(element)
            size = tables[mu].size
            if inverse.shape != (size, size):
                raise CardError(
                    f"{name}: the active set of {element} in {path.name} is {inverse.shape}, but the potential has "
                    f"{size} B-functions for it (only linear active sets are read: pace_activeset without --full)"
                )
            active_sets[mu] = ActiveSet.from_inverse(inverse)
        return cls(active_sets=active_sets, tables=tables)

    def uncertainties(self, potential, graph: BatchedGraph) -> list[Uncertainty]:
        """γ of every atom of ``graph``, and each system's largest."""
        gamma = np.zeros(graph.numbers.shape[0])
        for mu, (atoms, rows) in projections(potential, graph, self.tables).items():
            gamma[atoms] = self.active_sets[mu].grades(rows)
        offsets = graph.atom_offsets
        parts = [gamma[offsets[b] : offsets[b + 1]] for b in range(graph.n_systems)]
        return [
            Uncertainty(kind="gamma", value=float(part.max()) if part.size else 0.0, per_atom=part) for part in parts
        ]

    def select(self, potential, systems: Sequence[AtomicSystem], max_count: int, threshold: float) -> Selection:
        """γ of ``systems``, those above ``threshold``, and the structures pace_select picks against the active set
        (MaxVol per species over the candidates' projections and the active set's, LU start, tolerance 1.01)."""
        graph = build_graph(systems, potential.cutoff)
        gamma = np.zeros(graph.numbers.shape[0])
        groups = []
        for mu, (atoms, rows) in sorted(projections(potential, graph, self.tables).items()):
            gamma[atoms] = self.active_sets[mu].grades(rows)
            groups.append((rows, graph.batch[atoms], self.active_sets[mu]))
        offsets = graph.atom_offsets
        per_atom = [gamma[offsets[b] : offsets[b + 1]] for b in range(len(systems))]
        grades = np.array([part.max() if part.size else 0.0 for part in per_atom])
        selected = select_rows(groups, max_count, start="lu", tolerance=TOLERANCE, max_swaps=MAX_SWAPS)
        return Selection(
            grades=grades,
            per_atom=per_atom,
            above=[int(i) for i in np.flatnonzero(grades > threshold)],
            selected=selected,
        )


def projection_tables(potential) -> dict[int, ProjectionTable]:
    """The B-projection tables of every species of ``potential`` (a B-basis potential: functions keep gen_cgs)."""
    model, device, dtype = potential.model, potential.device, potential.dtype
    n_lm = (potential.lmax + 1) ** 2
    tables = {}
    for mu0 in range(len(model.elements)):
        functions = model.functions.get(mu0, [])
        if any(function.gen_cgs is None for function in functions):
            raise CardError(f"{potential.card.name}: γ needs the B-basis .yaml potential (a .yace file has no B-basis)")
        rank1 = sorted((f for f in functions if f.rank == 1), key=lambda f: f.mus)
        higher = sorted((f for f in functions if f.rank > 1), key=lambda f: (f.rank, f.mus))  # python-ace's order
        by_rank: dict[int, tuple[list, list, list]] = {}
        for column, function in enumerate(higher, start=len(rank1)):
            slots = [
                (mu * potential.nradmax + n - 1) * n_lm + ell * ell + ell + function.ms[:, t]
                for t, (mu, n, ell) in enumerate(zip(function.mus, function.ns, function.ls, strict=True))
            ]
            indices, columns, cgs = by_rank.setdefault(function.rank, ([], [], []))
            indices.append(np.stack(slots, axis=1))
            columns.append(np.full(function.ms.shape[0], column))
            cgs.append(function.gen_cgs)
        tables[mu0] = ProjectionTable(
            rank1=torch.tensor([f.mus[0] * potential.nradbase + f.ns[0] - 1 for f in rank1], device=device),
            products=[
                (
                    torch.as_tensor(np.concatenate(indices), device=device),
                    torch.as_tensor(np.concatenate(columns), device=device),
                    torch.as_tensor(np.concatenate(cgs), dtype=dtype, device=device),
                )
                for _, (indices, columns, cgs) in sorted(by_rank.items())
            ],
            size=len(rank1) + len(higher),
        )
    return tables


def projections(
    potential, graph: BatchedGraph, tables: dict[int, ProjectionTable]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per species present: its atoms (global indices, ascending) and their B-projections (atoms, functions)."""
    device, dtype = potential.device, potential.dtype
    n_atoms = int(graph.numbers.shape[0])
    species_np = potential._species_of_z[graph.numbers]
    with torch.inference_mode():
        species = torch.as_tensor(species_np, device=device)
        senders = torch.as_tensor(graph.senders, device=device)
        receivers = torch.as_tensor(graph.receivers, device=device)
        vectors = torch.as_tensor(graph.edge_vectors(), dtype=dtype, device=device)
        lengths = torch.linalg.vector_norm(vectors, dim=1)
        base = potential.atomic_base(species, senders, receivers, vectors, lengths, n_atoms)
        result = {}
        for mu, table in tables.items():
            atoms = np.flatnonzero(species_np == mu)
            if atoms.size == 0:
                continue
            selected = torch.as_tensor(atoms, device=device)
            rows = torch.zeros(table.size, atoms.size, dtype=dtype, device=device)
            rows[: table.rank1.shape[0]] = base.a1[table.rank1][:, selected]
            a = base.a[:, selected].contiguous()
            chunk = max(
                1, potential.product_chunk_elements // max(1, max([i.shape[0] for i, _, _ in table.products] + [1]))
            )
            for start in range(0, atoms.size, chunk):
                block = a[:, start : start + chunk]
                for index, columns, cgs in table.products:
                    product = block[index[:, 0]]
                    for t in range(1, index.shape[1]):
                        product = product * block[index[:, t]]
                    rows[:, start : start + chunk].index_add_(0, columns, product.real * cgs[:, None])
            result[mu] = (atoms, rows.T.double().cpu().numpy())
    return result
