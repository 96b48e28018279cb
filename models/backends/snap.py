"""SNAP backend: LAMMPS SNAP and quadratic SNAP potentials (``pair_style snap``) evaluated batched in torch.

LAMMPS evaluates SNAP one atom at a time on CPUs (or through Kokkos on one GPU, one structure per run). This is our
own implementation of the same model, so that a batch of structures is one set of tensor operations:

1. edges of the batched neighbour graph (:func:`mlipserve.models.graph.build_graph`) inside each pair's cutoff
   ``rcutfac (R_i + R_j)`` (the elements' radii of the ``.snapcoeff`` file);
2. bispectrum components of every atom (:mod:`.snap_bispectrum`: Wigner U recursion, Z, B; ``chemflag``,
   ``bnormflag``, ``wselfallflag``, ``bzeroflag`` and ``switchflag`` as LAMMPS has them);
3. atom energy ``β0 + β·B`` (+ ``½ Bᵀ α B`` with ``quadraticflag``), the coefficients of the atom's element;
4. optionally LAMMPS' ZBL pair term (:mod:`.snap_zbl`), when the card names the ``.snap`` include file that
   overlays it (``pair_style hybrid/overlay zbl INNER OUTER snap``);
5. forces and stress by autograd with respect to the edge vectors.

Card: ``checkpoint`` is the ``.snapcoeff``; ``options.snapparam`` + ``options.snapparam_sha256`` name the
``.snapparam`` file in the model directory; ``options.pair_include`` + ``options.pair_include_sha256`` may name the
``.snap`` include file, whose ZBL term is then added and whose ``pair_coeff * * snap`` line must name the card's two
files and gives the element order (LAMMPS' atom types); without it the element order is the ``.snapcoeff``'s.
``cutoff`` is the largest pair cutoff: ``rcutfac (R_i + R_j)`` over the elements' pairs, or ZBL's outer cutoff if
larger. ``options.dtype``: float64 (default) or float32. The tests compare with LAMMPS' own ``pair_style snap``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from ase.data import atomic_numbers

from ..cards import CardError, ModelCard
from ..edge_gradients import predict_on_edges
from ..graph import BatchedGraph, build_graph
from ..potential import ALL_PROPERTIES, Potential, Prediction
from ..system import AtomicSystem
from .ace import verified_companion
from .snap_bispectrum import Bispectrum
from .snap_format import SnapElement, SnapFormatError, SnapParameters, Zbl, read_model
from .snap_zbl import ZblTerm

_OPTIONS = {"snapparam", "snapparam_sha256", "pair_include", "pair_include_sha256", "dtype"}
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def load_potential(card: ModelCard, checkpoint: Path, device: torch.device) -> SnapPotential:
    """Read the ``.snapcoeff`` (already hash-checked), the ``.snapparam`` and the optional include file."""
    unknown = set(card.options) - _OPTIONS
    if unknown:
        raise CardError(f"{card.name}: unknown SNAP options {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    if "snapparam" not in card.options:
        raise CardError(f"{card.name}: a SNAP card needs options.snapparam (the .snapparam file) and its sha256")
    dtype_name = str(card.options.get("dtype", "float64"))
    if dtype_name not in _DTYPES:
        raise CardError(f"{card.name}: options.dtype must be one of {sorted(_DTYPES)}, got {dtype_name!r}")
    include = verified_companion(card, "pair_include") if "pair_include" in card.options else None
    try:
        model = read_model(checkpoint, verified_companion(card, "snapparam"), include)
        return SnapPotential(card, model.parameters, model.elements, model.zbl, device, _DTYPES[dtype_name])
    except SnapFormatError as error:
        raise CardError(f"{card.name}: {error}") from error


def snap_cutoffs(parameters: SnapParameters, elements: Sequence[SnapElement]) -> np.ndarray:
    """The SNAP pair cutoffs ``rcutfac (R_i + R_j)`` of every pair of ``elements``, Å."""
    radii = np.array([element.radius for element in elements])
    return parameters.rcutfac * (radii[:, None] + radii[None, :])


def model_cutoff(parameters: SnapParameters, elements: Sequence[SnapElement], zbl: Zbl | None = None) -> float:
    """A card's ``cutoff``: the largest SNAP pair cutoff, or ZBL's outer cutoff where larger."""
    return float(max(snap_cutoffs(parameters, elements).max(), zbl.outer if zbl and zbl.charges else 0.0))


class SnapPotential(Potential):
    """A linear or quadratic SNAP potential (optionally with ZBL) evaluated batch-wise in torch."""

    implemented_properties = ALL_PROPERTIES
    #: Size of the (product terms × atoms) complex tensors that one chunk of atoms may create in Z, by device type:
    #: small on a CPU, where tensors that stay in cache are faster; large on a GPU, where fewer launches are.
    product_chunk_elements: ClassVar[dict[str, int]] = {"cpu": 1 << 18, "cuda": 1 << 25}

    def __init__(
        self,
        card: ModelCard,
        parameters: SnapParameters,
        elements: tuple[SnapElement, ...],
        zbl: Zbl | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
    ):
        self.card, self.parameters, self.snap_elements = card, parameters, elements
        self.device, self.dtype = torch.device(device), dtype
        self.symbols = tuple(element.symbol for element in elements)
        self.elements = frozenset(atomic_numbers[symbol] for symbol in self.symbols)
        self.bispectrum = Bispectrum(parameters, len(elements), self.device, dtype)
        pair_cutoffs = snap_cutoffs(parameters, elements)
        self.zbl = ZblTerm(zbl, self.symbols, self.device, dtype) if zbl is not None and zbl.charges else None
        self.cutoff = model_cutoff(parameters, elements, zbl)
        self._pair_cutoffs = torch.as_tensor(pair_cutoffs, dtype=dtype, device=self.device)
        self._weights = torch.as_tensor([element.weight for element in elements], dtype=dtype, device=self.device)
        self._species_of_z = np.full(119, -1, dtype=np.int64)
        for index, symbol in enumerate(self.symbols):
            self._species_of_z[atomic_numbers[symbol]] = index
        self._read_coefficients()

    def _read_coefficients(self) -> None:
        """Constant, linear and (quadratic) symmetric matrix coefficients of every element, checked in count."""
        n = self.bispectrum.n_components
        expected = 1 + n + (n * (n + 1) // 2 if self.parameters.quadraticflag else 0)
        constants, linear, quadratic = [], [], []
        for element in self.snap_elements:
            values = element.coefficients
            if values.shape[0] != expected:
                kind = "quadratic" if self.parameters.quadraticflag else "linear"
                raise SnapFormatError(
                    f"element {element.symbol} has {values.shape[0]} coefficients; a {kind} SNAP with twojmax "
                    f"{self.parameters.twojmax}{' and chemflag' if self.parameters.chemflag else ''} has {expected}"
                )
            constants.append(values[0])
            linear.append(values[1 : 1 + n])
            if self.parameters.quadraticflag:
                upper = np.zeros((n, n))
                upper[np.triu_indices(n)] = values[1 + n :]  # row by row: (0,0), (0,1), ..., (1,1), ...
                quadratic.append(upper + upper.T - np.diag(np.diag(upper)))  # E = ½ Bᵀ S B
        as_tensor = lambda x: torch.as_tensor(np.array(x), dtype=self.dtype, device=self.device)  # noqa: E731
        self._constants, self._linear = as_tensor(constants), as_tensor(linear)
        self._quadratic = as_tensor(quadratic) if quadratic else None

    # -- contract -----------------------------------------------------------------------------------------------

    def predict_batch(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES
    ) -> list[Prediction]:
        """Evaluate all ``systems`` at once; autograd is used only when forces or stress are asked for."""
        graph = build_graph(systems, self.cutoff)
        energy_of = partial(self.system_energies, graph)
        return predict_on_edges(systems, properties, graph, energy_of, dtype=self.dtype, device=self.device)

    # -- the model ----------------------------------------------------------------------------------------------

    def system_energies(self, graph: BatchedGraph, vectors: torch.Tensor) -> torch.Tensor:
        """Total energy of each system of ``graph``, given its edge vectors (which may require grad)."""
        device = self.device
        species = torch.as_tensor(self._species_of_z[graph.numbers], device=device)
        senders = torch.as_tensor(graph.senders, device=device)
        receivers = torch.as_tensor(graph.receivers, device=device)
        centre_species, neighbour_species = species[senders], species[receivers]
        lengths = torch.linalg.vector_norm(vectors, dim=1)
        cutoffs = self._pair_cutoffs[centre_species, neighbour_species]
        inside = torch.nonzero((lengths < cutoffs) & (lengths * lengths > 1e-20)).flatten()
        budget = self.product_chunk_elements.get(device.type, 1 << 22)
        chunk = max(1, budget // self.bispectrum.n_product_terms)
        b = self.bispectrum.components(
            species,
            senders[inside],
            neighbour_species[inside],
            vectors[inside],
            cutoffs[inside],
            self._weights[neighbour_species[inside]],
            chunk,
        )
        atom_energy = self.atomic_energies(species, b)
        if self.zbl is not None:
            pair = self.zbl.edge_energies(centre_species, neighbour_species, lengths)
            atom_energy = atom_energy.index_add(0, senders, pair)
        batch = torch.as_tensor(graph.batch, device=device)
        return torch.zeros(graph.n_systems, dtype=self.dtype, device=device).index_add(0, batch, atom_energy)

    def atomic_energies(self, species: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``β0 + β·B (+ ½ Bᵀ S B)`` of every atom from its components ``b`` (n_components, n_atoms)."""
        energy = self._constants[species] + (self._linear[species] * b.T).sum(dim=1)
        if self._quadratic is not None:
            for index in range(len(self.snap_elements)):
                atoms = torch.nonzero(species == index).flatten()
                if atoms.numel():
                    columns = b[:, atoms]
                    quadratic = 0.5 * (columns * (self._quadratic[index] @ columns)).sum(dim=0)
                    energy = energy.index_add(0, atoms, quadratic)
        return energy
