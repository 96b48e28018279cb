"""GAP backend: QUIP/GAP XML potentials (``distance_2b`` and ``soap`` descriptors, sparse GP) batched in torch.

QUIP (quippy) evaluates GAPs on the CPU one structure at a time, and its GAP code is under an academic
non-commercial licence; this is our own implementation of the same model (``gap_format`` reads the XML,
``gap_descriptors`` computes the descriptors), float64 by default, with forces and stress by autograd:

1. edges of the batched neighbour graph (:func:`build_graph`) shorter than the largest descriptor cutoff;
2. per ``gpCoordinates``, its descriptors ``q`` (pairs for ``distance_2b``, centre atoms for ``soap``) with their
   cutoff weights ``w``;
3. sparse GP prediction ``e(q) = Σ_s α_s k(q, q_s) c_s`` with ``c_s`` the ``sparseCutoff`` of sparse point s and
   ``k = δ² (q·q_s)^ζ`` (``dot_product``) or ``k = δ² exp(-½ |(q - q_s)/θ|²) + f0²`` (``ard_se``);
4. ``E = E_scale (Σ w e(q) + Σ_atoms e0[Z])``, as QUIP's ``IPModel_GAP`` (plus the Glue's energy where the XML
   sums one);
5. forces ``F_i = -∂E/∂r_i`` and the virial from the gradient with respect to the edge vectors.

Card: ``checkpoint`` is the XML. Older fits keep their sparse points in separate files named in the XML
(``sparseX_filename``); list each in ``options.sparse_files`` (``{file name: sha256}``), checked like the checkpoint.
``options.dtype`` may be ``float32``. The XML's top-level ``Potential`` may be ``IP GAP`` or the ``Sum`` of it and
QUIP's ``IP Glue`` (LAMMPS' Si example; :mod:`.gap_glue`), served as their sum. Other potentials in a ``Sum``,
descriptor kinds and options that ``gap_descriptors`` does not compute, and covariance types other than ``ard_se``
and ``dot_product`` are refused by name. The tests compare energies, forces and stresses with quippy
(``quippy-ase``, test-only) on unseen structures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..cards import CardError, ModelCard
from ..graph import BatchedGraph, build_graph
from ..potential import ALL_PROPERTIES, Potential, Prediction, divide_by_volume, needs_gradients, split_batch
from ..system import AtomicSystem
from .ace import verified_companion
from .gap_descriptors import DescriptorNotSupported, Distance2b, Edges, Soap, make_descriptor
from .gap_format import (
    COVARIANCE_ARD_SE,
    COVARIANCE_DOT_PRODUCT,
    COVARIANCE_NAMES,
    GapFormatError,
    GapModel,
    SparseGP,
    read_gap,
)
from .gap_glue import GluePotential

_OPTIONS = {"sparse_files", "dtype"}
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def load_potential(card: ModelCard, checkpoint: Path, device: torch.device) -> GapPotential:
    """Read the GAP XML ``checkpoint`` (already hash-checked) and its sparse point files named in the card."""
    unknown = set(card.options) - _OPTIONS
    if unknown:
        raise CardError(f"{card.name}: unknown GAP options {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    dtype_name = str(card.options.get("dtype", "float64"))
    if dtype_name not in _DTYPES:
        raise CardError(f"{card.name}: options.dtype must be one of {sorted(_DTYPES)}, not {dtype_name!r}")
    hashes = card.options.get("sparse_files") or {}
    if not isinstance(hashes, dict):
        raise CardError(f"{card.name}: options.sparse_files must map each sparse point file to its sha256")

    def sparse_file(name: str) -> Path:
        if name not in hashes:
            raise CardError(
                f"{card.name}: the GAP XML keeps sparse points in {name!r}; list it in options.sparse_files "
                f"with its sha256 ({{{name}: <sha256>}})"
            )
        single = dataclasses.replace(card, options={"sparse_file": name, "sparse_file_sha256": str(hashes[name])})
        return verified_companion(single, "sparse_file")

    try:
        model = read_gap(checkpoint, sparse_file)
        return GapPotential(card, model, device, _DTYPES[dtype_name])
    except (GapFormatError, DescriptorNotSupported) as error:
        raise CardError(f"{card.name}: {error}") from error


@dataclasses.dataclass
class GapOutput:
    """Raw results of one batch: energies (B,), forces (N, 3) and virials (B, 3, 3), float64 numpy."""

    energy: np.ndarray
    forces: np.ndarray | None = None
    virial: np.ndarray | None = None


class _Term:
    """One ``gpCoordinates``: its descriptor and sparse GP as tensors."""

    def __init__(self, gp: SparseGP, descriptor: Distance2b | Soap, device: torch.device, dtype: torch.dtype):
        if gp.covariance_type not in (COVARIANCE_ARD_SE, COVARIANCE_DOT_PRODUCT):
            name = COVARIANCE_NAMES.get(gp.covariance_type, str(gp.covariance_type))
            raise DescriptorNotSupported(f"gpCoordinates {gp.label!r}: covariance {name} is not supported")
        if gp.n_permutations != 1:
            raise DescriptorNotSupported(f"gpCoordinates {gp.label!r}: permutation-symmetrised covariance "
                                         f"(n_permutations={gp.n_permutations}) is not supported")  # fmt: skip
        if gp.dimensions != descriptor.dimensions:
            raise DescriptorNotSupported(
                f"gpCoordinates {gp.label!r}: {gp.dimensions} dimensions, but its descriptor has "
                f"{descriptor.dimensions}"
            )
        if gp.covariance_type == COVARIANCE_ARD_SE and gp.theta.size not in (1, gp.dimensions):
            raise DescriptorNotSupported(f"gpCoordinates {gp.label!r}: {gp.theta.size} length scales")

        def tensor(values: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(values), dtype=dtype, device=device)

        self.descriptor, self.gp = descriptor, gp
        self.sparse_x = tensor(gp.sparse_x)
        self.weights = tensor(gp.alpha * gp.sparse_cutoff)  # α_s c_s
        self.theta = tensor(gp.theta) if gp.theta.size else None

    def energy(self, descriptors: torch.Tensor) -> torch.Tensor:
        """(D,) GP prediction of each descriptor."""
        gp = self.gp
        if gp.covariance_type == COVARIANCE_DOT_PRODUCT:
            kernel = gp.delta**2 * (descriptors @ self.sparse_x.T) ** gp.zeta
        else:
            assert self.theta is not None
            scaled = descriptors[:, None, :] / self.theta - self.sparse_x[None, :, :] / self.theta
            kernel = gp.delta**2 * torch.exp(-0.5 * (scaled**2).sum(dim=2)) + gp.f0**2
        return kernel @ self.weights


class GapPotential(Potential):
    """A GAP (sum of sparse GPs over ``distance_2b`` and ``soap`` descriptors) evaluated batch-wise in torch."""

    implemented_properties = ALL_PROPERTIES

    def __init__(
        self, card: ModelCard, model: GapModel, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
    ):
        others = [part for part in model.parts if part not in ("GAP", "Glue")]
        if others or model.parts.count("GAP") != 1 or model.parts.count("Glue") > 1:
            raise DescriptorNotSupported(
                f"the XML's Potential is {' + '.join(model.parts)}: only IP GAP, alone or plus one IP Glue, is "
                f"served ({', '.join(others) or 'this combination'} is not supported)"
            )
        self.card, self.model = card, model
        self.glue = _glue(model) if "Glue" in model.parts else None
        self.device, self.dtype = torch.device(device), dtype
        self.terms = [
            _Term(gp, make_descriptor(gp.descriptor, model.xml_version), self.device, dtype) for gp in model.gps
        ]
        self.cutoff = max([term.descriptor.cutoff for term in self.terms] + [self.glue.cutoff if self.glue else 0.0])
        named = set().union(*(term.descriptor.elements for term in self.terms))
        self.elements = frozenset(named if not self._has_wildcard() else named | set(model.e0))
        e0 = np.zeros(119)
        for z, value in model.e0.items():
            if 0 < z < e0.size:
                e0[z] = value
        self._e0 = torch.as_tensor(e0, dtype=dtype, device=self.device)

    def _has_wildcard(self) -> bool:
        for term in self.terms:
            descriptor = term.descriptor
            if isinstance(descriptor, Distance2b) and 0 in (descriptor.z1, descriptor.z2):
                return True
            if isinstance(descriptor, Soap) and (0 in descriptor.species_z or 0 in descriptor.centre_z):
                return True
        return False

    def predict_batch(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES
    ) -> list[Prediction]:
        """Evaluate all ``systems`` in one pass; gradients are taken only for forces or stress."""
        output = self.evaluate(build_graph(systems, self.cutoff), need_grad=needs_gradients(properties))
        stress = None if output.virial is None else divide_by_volume(systems, -output.virial)  # ASE: -W / V
        return split_batch(systems, properties, output.energy, output.forces, stress)

    def evaluate(self, graph: BatchedGraph, need_grad: bool = True) -> GapOutput:
        """Energies of every system of ``graph``; with ``need_grad`` also forces and virials."""
        vectors_np = graph.edge_vectors()
        keep = np.flatnonzero(np.einsum("ij,ij->i", vectors_np, vectors_np) < self.cutoff**2)
        n_atoms, n_systems, device = graph.numbers.shape[0], graph.n_systems, self.device
        with torch.inference_mode(False), torch.set_grad_enabled(need_grad):
            senders = torch.as_tensor(graph.senders[keep], device=device)
            receivers = torch.as_tensor(graph.receivers[keep], device=device)
            numbers = torch.as_tensor(graph.numbers, device=device)
            batch = torch.as_tensor(graph.batch, device=device)
            vectors = torch.as_tensor(vectors_np[keep], dtype=self.dtype, device=device)
            vectors.requires_grad_(need_grad)
            edges = Edges(senders, receivers, vectors, torch.linalg.vector_norm(vectors, dim=1), numbers, n_atoms)
            energy = torch.zeros(n_systems, dtype=self.dtype, device=device).index_add(0, batch, self._e0[numbers])
            for term in self.terms:
                descriptors, weight, owner = term.descriptor.compute(edges)
                if owner.numel():
                    energy = energy.index_add(0, batch[owner], term.energy(descriptors) * weight)
            energy = energy * self.model.energy_scale
            if self.glue is not None:
                site = self.glue.energy(senders, receivers, edges.distances, numbers)
                energy = energy.index_add(0, batch, site)
            if not need_grad or not vectors.requires_grad or vectors.shape[0] == 0 or not energy.requires_grad:
                zeros = (np.zeros((n_atoms, 3)), np.zeros((n_systems, 3, 3))) if need_grad else (None, None)
                return GapOutput(_numpy(energy), *zeros)
            (gradient,) = torch.autograd.grad(energy.sum(), vectors)
        forces = torch.zeros((n_atoms, 3), dtype=self.dtype, device=device)
        forces = forces.index_add(0, senders, gradient).index_add(0, receivers, gradient, alpha=-1)
        edge_virial = -gradient[:, :, None] * vectors.detach()[:, None, :]
        virial = torch.zeros((n_systems, 3, 3), dtype=self.dtype, device=device)
        virial = virial.index_add(0, batch[senders], edge_virial)
        virial = 0.5 * (virial + virial.transpose(1, 2))
        return GapOutput(_numpy(energy), _numpy(forces), _numpy(virial))


def _glue(model: GapModel) -> GluePotential:
    element = None if model.root is None else model.root.find("Glue_params")
    if element is None:
        raise GapFormatError("the XML's Potential adds IP Glue, but the file has no <Glue_params>")
    return GluePotential(element, "Glue_params")


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()
