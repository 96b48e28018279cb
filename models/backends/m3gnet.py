"""M3GNet backend: matgl's PyG ``Potential`` over an ``M3GNet`` model, one forward pass per batch.

Format. A matgl model is a folder of three files written by ``Potential.save``: ``state.pt`` (``torch.save`` of the
state dict: tensors only), ``model.pt`` (``torch.save`` of the constructor arguments: numbers, strings, lists,
tensors, sometimes numeric numpy arrays, and the inner model's class name and arguments) and ``model.json`` (the
same as text, for people). The card's ``checkpoint`` is ``state.pt``; ``model.pt`` is its companion, found beside it
(or named by ``options.init_args``) and hash-checked too: by ``options.init_args_sha256`` in a user card, by the
``model.pt.sha256`` pin beside it for a built-in card whose files the user downloads. ``model.json`` is not read.
Both ``.pt`` files are read with :func:`~mlipserve.models.loading.load_weights_only` (``weights_only=True``, numeric
numpy arrays allowed), as matgl itself reads them; nothing in them is executed. Unlike ``matgl.load_model``, the
classes are not imported by the names the file gives: only an ``M3GNet`` inside a ``Potential`` is built, by this
module, and anything else (TensorNet, CHGNet, QET, property models) is refused by name.

Batching. Each structure becomes a PyG ``Data`` graph as matgl's ``Atoms2Graph`` makes it (edge list sorted by
centre atom, integer image offsets, fractional coordinates, lattice), with the neighbour list from
:func:`mlipserve.models.graph.neighbor_list`; ``Batch.from_data_list`` joins them and one call of matgl's
``Potential`` (its own batched path, used by matgl's training) returns the energies, the forces (``-dE/dr``) and the
stresses (``(1/V) dE/dε``, ASE's sign, which matgl reports in GPa and this module converts back to eV/Å³ with matgl's
own factor). The model runs in the dtype of the checkpoint's tensors (``load_state_dict(assign=True)`` keeps them
as stored); the process-wide torch default dtype is never switched.

Deviation from matgl's ``PESCalculator``: it treats a structure periodic in only some directions (a slab) as a
molecule, with no periodic images at all; here a slab gets its images along its periodic directions, as every
other family does. For a slab whose vacuum is wider than the cutoff the result equals ``PESCalculator`` on the
same slab with ``pbc=True``. Importing matgl adds numpy's numeric array types to torch's process-wide
``weights_only`` allowlist (``matgl.utils.io``): the same types :data:`~mlipserve.models.loading.NUMPY_ARRAYS`
allows, so no other ``torch.load`` becomes less safe.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from ase.data import atomic_numbers

from ..cards import CardError, ModelCard
from ..graph import neighbor_list
from ..loading import NUMPY_ARRAYS, load_weights_only
from ..potential import (
    ALL_PROPERTIES,
    STRESS,
    Potential,
    Prediction,
    has_volume,
    needs_gradients,
    split_batch,
)
from ..system import AtomicSystem

try:  # matgl is the optional dependency of this family; the registry reports a missing package clearly
    import matgl
    from matgl.apps.pes import Potential as MatglPotential
    from matgl.models import M3GNet
    from matgl.utils.constants import EV_PER_ANG3_TO_GPA
    from torch_geometric.data import Batch, Data
except ImportError as error:  # pragma: no cover - exercised only without matgl
    raise ImportError(f"the M3GNet backend needs the 'matgl' package: {error}") from error

#: Potential options that change what the forward pass returns or how it runs; fixed here, whatever the file says.
_FIXED_OPTIONS = {"calc_hessian": False, "calc_magmom": False, "debug_mode": False, "compile_model": False}
#: Potential options whose models this backend does not evaluate (and has not been tested with).
_REFUSED_OPTIONS = {
    "calc_charge": "charge-equilibrated potentials need a total charge per structure",
    "calc_repuls": "the ZBL repulsion term is not supported",
}


def load_potential(card: ModelCard, checkpoint: Path, device: torch.device) -> M3GNetPotential:
    """Read ``state.pt`` (``checkpoint``, already hash-checked) and its ``model.pt``, and build the model."""
    init_card = _init_args_card(card)
    init_args = load_weights_only(init_card, init_card.verified_checkpoint(), NUMPY_ARRAYS)
    state = load_weights_only(card, checkpoint)
    return M3GNetPotential(card, init_args, state, device)


def _init_args_card(card: ModelCard) -> ModelCard:
    """The card of the companion ``model.pt``: its path in the model directory and the sha256 it must have."""
    default = str(PurePosixPath(card.checkpoint).with_name("model.pt"))
    path = str(card.options.get("init_args", default))
    digest = str(card.options.get("init_args_sha256") or "").strip().lower()
    companion = dataclasses.replace(card, checkpoint=path, sha256=digest)
    if digest:
        return companion
    if card.user_brought and card.root is not None:  # a built-in card: the user pins model.pt beside it
        return companion.in_model_dir(card.root)
    raise CardError(
        f"{card.name}: an M3GNet model is two files; give the sha256 of {path} (matgl's model.pt) as "
        f"options.init_args_sha256 in the card"
    )


class M3GNetPotential(Potential):
    """A matgl M3GNet potential that evaluates whole batches, in the dtype its checkpoint holds."""

    implemented_properties = ALL_PROPERTIES

    def __init__(
        self, card: ModelCard, init_args: Any, state: Any, device: torch.device | str = "cpu"
    ):  # the arguments are what model.pt and state.pt hold
        self.card = card
        self.device = torch.device(device)
        model_args, potential_args = _split_init_args(card, init_args)
        try:
            potential = MatglPotential(model=M3GNet(**model_args), **potential_args)
        except (TypeError, ValueError, KeyError) as error:
            raise CardError(f"{card.name}: model.pt does not describe an M3GNet matgl can build: {error}") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CardError(f"{card.name}: {Path(card.checkpoint).name} is not a state dict of tensors")
        _load_state(card, potential, state)
        self.model = potential.to(self.device).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.dtype = self.model.data_mean.dtype  # the dtype matgl's forward pass casts its inputs to
        self.element_types = tuple(str(symbol) for symbol in self.model.model.element_types)
        self.elements = frozenset(atomic_numbers[symbol] for symbol in self.element_types)
        self.cutoff = float(self.model.model.cutoff)
        self._type_index = np.full(max(self.elements) + 1, -1, dtype=np.int64)
        for index, symbol in enumerate(self.element_types):
            self._type_index[atomic_numbers[symbol]] = index
        # matgl's Potential decides what to differentiate from its calc_forces / calc_stresses attributes, set per
        # batch below: one batch at a time per potential.
        self._lock = threading.Lock()

    def predict_batch(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES
    ) -> list[Prediction]:
        """Evaluate all ``systems`` in one forward pass; gradients are taken only for forces or stress."""
        need_forces = needs_gradients(properties)
        need_stress = STRESS in properties and any(has_volume(system) for system in systems)
        graph, lattices = self._batch(systems)
        with self._lock:
            self.model.calc_forces = need_forces
            self.model.calc_stresses = need_stress
            if need_forces:
                # Forces and stress are autograd derivatives; this must work under the caller's no_grad or
                # inference_mode, so the input tensors are made outside inference mode too.
                with torch.inference_mode(False), torch.enable_grad():
                    energy, forces, stress, _ = self.model(graph, lattices)
            else:
                with torch.no_grad():
                    energy, forces, stress, _ = self.model(graph, lattices)
        energies = energy.detach().cpu().double().numpy().reshape(-1)
        forces_out = forces.detach().cpu().double().numpy() if need_forces else None
        stress_out = None
        if need_stress:
            stress_out = stress.detach().cpu().double().numpy().reshape(-1, 3, 3) / EV_PER_ANG3_TO_GPA
        return split_batch(systems, properties, energies, forces_out, stress_out)

    def _batch(self, systems: Sequence[AtomicSystem]) -> tuple[Batch, torch.Tensor]:
        """The systems as one PyG ``Batch`` of matgl graphs, and their lattices (k, 3, 3)."""
        with torch.inference_mode(False):
            graphs, lattices = zip(*(self._graph(system) for system in systems), strict=True)
            batch = Batch.from_data_list(list(graphs)).to(self.device)
            return batch, torch.stack(lattices).to(self.device)

    def _graph(self, system: AtomicSystem) -> tuple[Data, torch.Tensor]:
        """One structure as ``Atoms2Graph`` makes it: edges sorted by centre atom, image offsets, fractional
        coordinates; a molecule has the identity as its lattice and its Cartesian positions as coordinates."""
        senders, receivers, shifts = neighbor_list(system, self.cutoff)
        order = np.argsort(senders, kind="stable")  # matgl's three-body indexing needs the edges grouped by centre
        lattice = _lattice(system)
        coordinates = np.linalg.solve(lattice.T, system.positions.T).T
        graph = Data(
            num_nodes=system.n_atoms,
            edge_index=torch.as_tensor(np.stack([senders[order], receivers[order]]), dtype=matgl.int_th),
            pbc_offset=torch.as_tensor(shifts[order], dtype=self.dtype),
            node_type=torch.as_tensor(self._type_index[system.numbers], dtype=torch.long),
            frac_coords=torch.as_tensor(coordinates, dtype=self.dtype),
        )
        return graph, torch.as_tensor(lattice, dtype=self.dtype)


def _split_init_args(card: ModelCard, init_args: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The inner M3GNet's constructor arguments and the Potential's, checked to be an M3GNet PES."""
    spec = init_args.get("model") if isinstance(init_args, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("init_args"), dict):
        raise CardError(f"{card.name}: model.pt holds no matgl Potential (no inner model with its arguments)")
    if spec.get("@class") != "M3GNet":
        raise CardError(
            f"{card.name}: model.pt describes a {spec.get('@class')!r} potential; family m3gnet serves M3GNet only"
        )
    model_args = {key: value for key, value in spec["init_args"].items() if not key.startswith("@")}
    if model_args.get("is_intensive", True) or model_args.get("task_type", "regression") != "regression":
        raise CardError(f"{card.name}: the M3GNet in model.pt predicts an intensive property, not an energy")
    if model_args.get("include_state", False):
        raise CardError(f"{card.name}: M3GNet models with state attributes (include_state) are not supported")
    potential_args = {key: value for key, value in init_args.items() if key != "model" and not key.startswith("@")}
    for option, why in _REFUSED_OPTIONS.items():
        if potential_args.get(option):
            raise CardError(f"{card.name}: model.pt sets {option}: {why}")
    potential_args.update(_FIXED_OPTIONS)
    return model_args, potential_args


def _load_state(card: ModelCard, potential: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load the state dict as stored (``assign=True``: its tensors, in their dtype); every parameter must be in it.

    The module is first moved to the dtype of the stored parameters, so that the buffers the file does not hold
    (matgl's non-persistent dtype references and constants) follow the model's dtype, as they do when matgl builds
    the model under that default dtype; the stored tensors then replace the rest as they are (a float32 model may
    keep float64 reference energies, as matgl's own loading keeps them).
    """
    parameters = {name for name, _ in potential.named_parameters()}
    dtypes = {state[name].dtype for name in parameters if name in state}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise CardError(
            f"{card.name}: the parameters in {Path(card.checkpoint).name} have dtypes {sorted(map(str, dtypes))}"
        )
    potential.to(next(iter(dtypes)))
    result = potential.load_state_dict(state, strict=False, assign=True)
    missing = sorted(name for name in result.missing_keys if name in parameters)
    # Older matgl files carry AtomRef's identity cache (".onehot"), which current matgl derives instead.
    unexpected = sorted(name for name in result.unexpected_keys if not name.endswith(".onehot"))
    if missing or unexpected:
        raise CardError(
            f"{card.name}: {Path(card.checkpoint).name} does not match the M3GNet that model.pt describes "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}); was it saved by an older, incompatible matgl?"
        )


def _lattice(system: AtomicSystem) -> np.ndarray:
    """The lattice matgl's graph uses: the identity for a molecule; for a periodic system its cell, with a unit
    vector for a non-periodic axis that has none (no image is ever taken along it)."""
    if not system.pbc.any():
        return np.eye(3)
    cell = system.cell.copy()
    for axis in range(3):
        if not system.pbc[axis] and np.linalg.norm(cell[axis]) < 1e-12:
            cell[axis] = np.eye(3)[axis]
    return cell
