"""CHGNet backend: each system's ``CrystalGraph`` is built from a vesin neighbour list by chgnet's own graph code,
and the whole batch goes through one ``CHGNet.forward`` call; results are in the units and signs that
``CHGNetCalculator`` reports (eV, eV/Å, eV/Å³). Molecules are put in a vacuum box wider than the cutoff.

A CHGNet checkpoint is a ``torch.save`` of plain data: ``{"model": {"state_dict": ..., "model_args": ...}}`` plus
optimiser, scheduler and training history. chgnet's ``CHGNet.from_file`` reads it with ``weights_only=False``;
here it is read with ``torch.load(weights_only=True)`` (:func:`~mlipserve.models.loading.load_weights_only`, no
extra classes allowed) and the model is built by chgnet's ``CHGNet.from_dict`` from the ``model`` entry.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import vesin
from ase.data import chemical_symbols
from ase.units import GPa
from chgnet.graph.crystalgraph import CrystalGraph
from chgnet.model.model import CHGNet

from ...errors import ErrorCode
from ..cards import CardError, ModelCard
from ..loading import load_weights_only
from ..potential import ALL_PROPERTIES, FORCES, STRESS, Potential, Prediction, StructureRejected
from ..system import AtomicSystem

# chgnet builds its volume tensor from grad-tracking scalars; torch warns about that.
warnings.filterwarnings("ignore", "Converting a tensor with requires_grad=True", UserWarning, r"chgnet\.model\.model")

#: Vacuum (Å) added on each side of a molecule's bounding box, beyond the cutoff, when it is put in a box.
_BOX_MARGIN = 1.0


def load_potential(card: ModelCard, checkpoint: Path, device: torch.device) -> CHGNetPotential:
    """Build the CHGNet stored in ``checkpoint`` (read with weights_only) and check its bond graph cutoff."""
    options = {"mlp_out_bias": bool(card.options["mlp_out_bias"])} if "mlp_out_bias" in card.options else {}
    contents = load_weights_only(card, checkpoint)
    saved = contents.get("model") if isinstance(contents, dict) else None
    if not isinstance(saved, dict) or "state_dict" not in saved or "model_args" not in saved:
        raise CardError(
            f"{card.name}: {checkpoint.name} is not a CHGNet checkpoint (no model state_dict and model_args)"
        )
    with contextlib.redirect_stdout(io.StringIO()):  # chgnet prints a banner when it builds a model
        model = CHGNet.from_dict(saved, **options)
    return CHGNetPotential(card, model, torch.device(device))


class CHGNetPotential(Potential):
    """A CHGNet model evaluating batches of crystals and molecules in float32."""

    implemented_properties = ALL_PROPERTIES

    def __init__(self, card: ModelCard, model: CHGNet, device: torch.device):
        converter = model.graph_converter
        bond_cutoff = card.options.get("bond_graph_cutoff")
        if bond_cutoff is None:
            raise CardError(f"{card.name}: a CHGNet card needs options.bond_graph_cutoff")
        if float(converter.bond_graph_cutoff) != float(bond_cutoff):
            raise CardError(
                f"{card.name}: the checkpoint's bond graph cutoff is {converter.bond_graph_cutoff} Å, "
                f"but the card says {bond_cutoff} Å"
            )
        self.card = card
        self.device = device
        self.dtype = torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.cutoff = float(converter.atom_graph_cutoff)
        self.bond_graph_cutoff = float(converter.bond_graph_cutoff)
        # The atom embedding has a row for each atomic number from 1 up.
        self.elements = frozenset(range(1, self.model.atom_embedding.embedding.num_embeddings + 1))

    def check_structure(self, system: AtomicSystem) -> None:
        """Reject a system with an atom that has no neighbour within the cutoff (CHGNet cannot evaluate it)."""
        i, _, _, _ = self._neighbors(system)
        isolated = np.setdiff1d(np.arange(system.n_atoms), i)
        if isolated.size:
            k = int(isolated[0])
            more = f" (and {isolated.size - 1} more)" if isolated.size > 1 else ""
            raise StructureRejected(
                ErrorCode.ISOLATED_ATOM,
                f"atom {k} ({chemical_symbols[int(system.numbers[k])]}){more} has no neighbour within "
                f"{self.cutoff} Å, which CHGNet cannot evaluate",
            )

    def predict_batch(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES
    ) -> list[Prediction]:
        """Evaluate ``systems`` in one CHGNet forward pass."""
        want_forces = FORCES in properties
        want_stress = STRESS in properties and any(system.is_periodic for system in systems)
        task = "efs" if want_stress else "ef" if want_forces else "e"
        # Forces and stresses are autograd derivatives: keep grad mode on even if the caller turned it off.
        with torch.inference_mode(False), torch.set_grad_enabled(task != "e"):
            graphs = [self.crystal_graph(system).to(self.device) for system in systems]
            output = self.model(graphs, task=task)
        energies = output["e"].detach().cpu().numpy().astype(np.float64)
        predictions = []
        for index, system in enumerate(systems):
            energy = float(energies[index]) * (system.n_atoms if self.model.is_intensive else 1)
            prediction = Prediction(energy=energy)
            if want_forces:
                prediction.forces = output["f"][index].detach().cpu().numpy().astype(np.float64)
            if want_stress and system.is_periodic:
                # GPa -> eV/Å³. chgnet divides by the signed volume, which flips the stress of a left-handed cell:
                # undo that. Symmetrised, as ASE does when CHGNetCalculator's 3×3 is read out in Voigt form.
                stress = output["s"][index].detach().cpu().numpy().astype(np.float64)
                stress *= GPa * np.sign(np.linalg.det(system.cell))
                prediction.stress = 0.5 * (stress + stress.T)
            predictions.append(prediction)
        return predictions

    def crystal_graph(self, system: AtomicSystem) -> CrystalGraph:
        """The CrystalGraph of one system, with the same edges chgnet's ``CrystalGraphConverter`` would draw."""
        center, neighbor, image, distance = self._neighbors(system)
        lattice, positions = self._lattice(system)
        graph = self.model.graph_converter.create_graph(system.n_atoms, center, neighbor, image, distance)
        atom_graph, directed2undirected = graph.adjacency_list()
        bond_graph, undirected2directed = graph.line_graph_adjacency_list(cutoff=self.bond_graph_cutoff)
        frac_coords = np.linalg.solve(lattice.T, positions.T).T
        return CrystalGraph(
            atomic_number=torch.tensor(system.numbers, dtype=torch.int32),
            atom_frac_coord=torch.tensor(frac_coords, dtype=self.dtype, requires_grad=True),
            atom_graph=torch.tensor(atom_graph, dtype=torch.int32).reshape(-1, 2),
            atom_graph_cutoff=self.cutoff,
            neighbor_image=torch.tensor(image, dtype=self.dtype).reshape(-1, 3),
            directed2undirected=torch.tensor(directed2undirected, dtype=torch.int32),
            undirected2directed=torch.tensor(undirected2directed, dtype=torch.int32),
            bond_graph=torch.tensor(bond_graph, dtype=torch.int32),
            bond_graph_cutoff=self.bond_graph_cutoff,
            lattice=torch.tensor(lattice, dtype=self.dtype, requires_grad=True),
        )

    def _neighbors(self, system: AtomicSystem) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Full vesin neighbour list ``(center, neighbor, image, distance)``; no images for a molecule."""
        box = system.cell if system.is_periodic else np.zeros((3, 3))
        calculator = vesin.NeighborList(cutoff=self.cutoff, full_list=True)
        i, j, shifts, distances = calculator.compute(
            points=system.positions, box=box, periodic=system.pbc.tolist(), quantities="ijSd"
        )
        return (
            np.ascontiguousarray(i, dtype=np.int64),
            np.ascontiguousarray(j, dtype=np.int64),
            np.ascontiguousarray(shifts, dtype=np.int64).reshape(-1, 3),
            np.ascontiguousarray(distances, dtype=np.float64),
        )

    def _lattice(self, system: AtomicSystem) -> tuple[np.ndarray, np.ndarray]:
        """The lattice and positions given to CHGNet: the system's own, or a vacuum box around a molecule."""
        if system.is_periodic:
            return system.cell, system.positions
        # No image lies within the cutoff of any atom, and the molecule is moved inside the box so that its
        # fractional coordinates stay in [0, 1) (float32 keeps them precise there); both leave E and F unchanged.
        low, high = system.positions.min(axis=0), system.positions.max(axis=0)
        pad = self.cutoff + _BOX_MARGIN
        return np.diag(high - low + 2 * pad), system.positions - low + pad
