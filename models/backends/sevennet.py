"""SevenNet backend: evaluates a batch of structures with a SevenNet checkpoint in one forward pass.

The network is rebuilt from the checkpoint file named by the card (never from a pretrained name). The batch's
neighbour list comes from :func:`mlipserve.models.graph.build_graph`; it is turned into the batched
``AtomGraphData`` that SevenNet's model expects (edge vectors carry the gradient; forces and the virial come from
``dE/d(edge vector)``), and the outputs are converted to ASE's units and sign conventions exactly as
``sevenn.calculator.SevenNetCalculator`` does.

A SevenNet checkpoint is a ``torch.save`` of a dict: ``config`` (numbers, strings, lists, dicts, tensors and a few
numeric numpy arrays such as ``shift``), ``model_state_dict``, optimiser and scheduler state, ``epoch``. sevenn
reads it with ``weights_only=False``; here it is read with ``torch.load(weights_only=True)``
(:func:`~mlipserve.models.loading.load_weights_only`), allowing beyond torch's defaults only numpy's numeric
arrays (:data:`~mlipserve.models.loading.NUMPY_ARRAYS`), and the network is then built by sevenn from that dict.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cards import CardError, ModelCard
from ..graph import BatchedGraph, build_graph
from ..loading import NUMPY_ARRAYS, load_weights_only
from ..potential import ALL_PROPERTIES, MIN_VOLUME, Potential, Prediction, needs_gradients, split_batch
from ..prediction import FORCES, STRESS
from ..system import AtomicSystem
from ..tensor_batch import TensorBatch, TensorPrediction

try:  # sevenn is the optional dependency of this family; the registry reports a missing package clearly
    import sevenn._keys as KEY
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.checkpoint import SevenNetCheckpoint, _config_cp_routine
    from sevenn.nn.force_output import ForceStressOutputFromEdge
    from sevenn.nn.sequential import AtomGraphSequential
except ImportError as error:  # pragma: no cover - exercised only without sevenn
    raise ImportError(f"the SevenNet backend needs the 'sevenn' package: {error}") from error

#: SevenNet's stress order [xx, yy, zz, xy, yz, zx] -> rows/columns of the symmetric 3×3 matrix.
_STRESS_INDEX = np.array([[0, 3, 5], [3, 1, 4], [5, 4, 2]])


def load_potential(card: ModelCard, checkpoint: Path, device: torch.device) -> SevenNetPotential:
    """Build the SevenNet network stored in ``checkpoint`` (already hash-checked) on ``device``."""
    return SevenNetPotential(card, checkpoint, device)


class _WeightsOnlyCheckpoint(SevenNetCheckpoint):
    """sevenn's checkpoint object, given the file's contents as read with ``weights_only=True``.

    ``SevenNetCheckpoint`` reads its file lazily, in ``_load``, with ``weights_only=False``. This subclass fills the
    attributes that ``_load`` would fill from the contents already read, and ``_load`` itself refuses to run, so
    sevenn never unpickles the file; ``build_model`` (config defaults, patches for old checkpoints, e3nn and
    cuEquivariance conversions) is sevenn's own. The attributes (and ``_config_cp_routine``) are sevenn 0.13's.
    """

    def __init__(self, path: Path, contents: Any, card: ModelCard):
        super().__init__(path)
        if not isinstance(contents, dict) or not contents.get("config") or not contents.get("model_state_dict"):
            raise CardError(f"{card.name}: {path.name} is not a SevenNet checkpoint (no config and model_state_dict)")
        self._config_original = contents["config"]
        self._config = _config_cp_routine(contents["config"])  # sevenn's defaults and old-version patches
        self._model_state_dict = contents["model_state_dict"]
        self._optimizer_state_dict = contents.get("optimizer_state_dict", {})
        self._scheduler_state_dict = contents.get("scheduler_state_dict", {})
        self._epoch = contents.get("epoch")
        self._time = contents.get("time", "Not found")
        self._hash = contents.get("hash", "Not found")
        self._loaded = True

    def _load(self) -> None:
        raise RuntimeError("a SevenNet checkpoint is read with weights_only=True, never by sevenn's own torch.load")


class SevenNetPotential(Potential):
    """A SevenNet model that evaluates whole batches; float32, as SevenNet is trained and run."""

    implemented_properties = ALL_PROPERTIES

    def __init__(self, card: ModelCard, checkpoint: Path, device: torch.device | str):
        self.card = card
        self.device = torch.device(device)
        self.dtype = torch.float32
        sevenn_checkpoint = _WeightsOnlyCheckpoint(checkpoint, load_weights_only(card, checkpoint, NUMPY_ARRAYS), card)
        config = sevenn_checkpoint.config
        self.modal = self._pick_modal(card, config)
        self.elements = frozenset(int(z) for z in config[KEY.TYPE_MAP])
        self.cutoff = float(config[KEY.CUTOFF])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning)
            model = sevenn_checkpoint.build_model(enable_cueq=_wants_cueq(card))
        model.set_is_batch_data(True)
        self.model: AtomGraphSequential = model.to(self.device).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @staticmethod
    def _pick_modal(card: ModelCard, config: dict[str, Any]) -> str | None:
        """The fidelity (``options.modal`` in the card) of a multi-modal checkpoint; None for a single-modal one."""
        modal_map = config.get(KEY.MODAL_MAP) if config.get(KEY.USE_MODALITY, False) else None
        modal = card.options.get("modal")
        if not modal_map:
            if modal is not None:
                raise CardError(f"{card.name}: options.modal={modal!r} given, but the checkpoint is not multi-modal")
            return None
        if modal not in modal_map:
            raise CardError(f"{card.name}: set options.modal in the card to one of {sorted(modal_map)}")
        return str(modal)

    def predict_batch(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES
    ) -> list[Prediction]:
        """Evaluate all ``systems`` in one forward pass; gradients are taken only for forces or stress.

        Elements outside :attr:`elements` must have been refused (:meth:`check`): sevenn maps them to -1 silently.
        """
        graph = build_graph(systems, self.cutoff)
        need_grad = needs_gradients(properties)
        output = self._forward(graph, need_grad)

        energy = output[KEY.PRED_TOTAL_ENERGY].detach().cpu().double().numpy().reshape(-1)
        forces = stress = None
        if need_grad:
            # A batch without a single edge leaves the forces and the virial unset (their gradient is None).
            forces = _numpy(output, KEY.PRED_FORCE, (graph.positions.shape[0], 3))
            stress = _numpy(output, KEY.PRED_STRESS, (graph.n_systems, 6))
            # sevenn's stress is [xx, yy, zz, xy, yz, zx] with the opposite sign to ASE (SevenNetCalculator negates
            # it and reorders it to Voigt); here it becomes the full symmetric matrix with ASE's sign.
            stress = -stress[:, _STRESS_INDEX]

        return split_batch(systems, properties, energy, forces, stress)

    @property
    def tensor_native(self) -> bool:
        return True

    def predict_tensors(self, batch: TensorBatch, properties: Sequence[str] = ALL_PROPERTIES) -> TensorPrediction:
        """Evaluate a device batch without a host round trip: the same model input as :meth:`predict_batch`
        builds, from ``batch.neighbor_list`` (edges beyond the cutoff, from a skin list, are left out)."""
        if batch.n_systems == 0:
            return super().predict_tensors(batch, properties)
        edges = batch.neighbor_list(self.cutoff)
        vectors = batch.edge_vectors(edges)
        keep = torch.nonzero(torch.linalg.vector_norm(vectors, dim=1) < self.cutoff).flatten()
        device, dtype = self.device, self.dtype
        volumes = batch.volumes()
        volumes = torch.where(volumes < MIN_VOLUME, 1.0, volumes)  # as _to_sevenn: a molecule's stress stays finite
        numbers = batch.numbers.to(device)
        data = AtomGraphData(
            x=numbers.clone(),
            edge_index=torch.stack([edges.senders[keep], edges.receivers[keep]]).to(device),
            pos=batch.positions.to(device, dtype),
            **{
                KEY.ATOMIC_NUMBERS: numbers,
                KEY.EDGE_VEC: vectors[keep].to(device, dtype),
                KEY.CELL: batch.cells.to(device, dtype),
                KEY.CELL_SHIFT: edges.shifts[keep].to(device, dtype),
                KEY.CELL_VOLUME: volumes.to(device, dtype),
                KEY.NUM_ATOMS: batch.n_atoms.to(device),
                KEY.BATCH: batch.batch.to(device),
            },
        )
        if self.modal is not None:
            data[KEY.DATA_MODALITY] = [self.modal] * batch.n_systems
        need_grad = needs_gradients(properties)
        output = self._run(data, need_grad)
        result = TensorPrediction(output[KEY.PRED_TOTAL_ENERGY].detach().reshape(-1).to(torch.float64))
        if need_grad:
            n_atoms = int(batch.positions.shape[0])
            if KEY.PRED_FORCE in output:
                forces = output[KEY.PRED_FORCE].detach().reshape(n_atoms, 3).to(torch.float64)
            else:
                forces = torch.zeros((n_atoms, 3), dtype=torch.float64, device=device)
            if KEY.PRED_STRESS in output:
                voigt = output[KEY.PRED_STRESS].detach().reshape(-1, 6).to(torch.float64)
                stress = -voigt[:, torch.as_tensor(_STRESS_INDEX, device=device)]  # ASE's sign, 3×3
            else:
                stress = torch.zeros((batch.n_systems, 3, 3), dtype=torch.float64, device=device)
            has_volume = batch.volumes().to(device) > 0
            result.forces = forces if FORCES in properties else None
            result.stress = torch.where(has_volume[:, None, None], stress, 0.0) if STRESS in properties else None
        return result

    def _run(self, data: AtomGraphData, need_grad: bool) -> AtomGraphData:
        """Run the model on its input; without ``need_grad`` skip its force/stress module (as :meth:`_forward`)."""
        if need_grad:
            with torch.inference_mode(False), torch.enable_grad():
                return self.model(data)
        with torch.no_grad():
            data = self.model._preprocess(data)
            for module in self.model:
                if not isinstance(module, ForceStressOutputFromEdge):
                    data = module(data)
        return data

    def _to_sevenn(self, graph: BatchedGraph) -> AtomGraphData:
        """The batched input of a SevenNet model (the keys a PyG ``Batch`` of ``AtomGraphData`` carries)."""
        device, dtype = self.device, self.dtype
        numbers = torch.as_tensor(graph.numbers, dtype=torch.int64, device=device)
        # Edge vectors in float64, then rounded to float32 once, as SevenNetCalculator feeds them.
        edge_vectors = graph.edge_vectors()
        volumes = np.array(
            [abs(np.linalg.det(cell)) if pbc.any() else 0.0 for cell, pbc in zip(graph.cells, graph.pbc, strict=True)]
        )
        # A system with no cell (a molecule) gets volume 1: sevenn divides its virial by the volume, and the
        # resulting (unused) stress must stay finite. Its stress is not reported.
        volumes[volumes < MIN_VOLUME] = 1.0
        data = AtomGraphData(
            x=numbers.clone(),  # placeholder: the model maps atomic numbers to its type indices into x
            edge_index=torch.as_tensor(np.stack([graph.senders, graph.receivers]), dtype=torch.int64, device=device),
            pos=torch.as_tensor(graph.positions, dtype=dtype, device=device),
            **{
                KEY.ATOMIC_NUMBERS: numbers,
                KEY.EDGE_VEC: torch.as_tensor(edge_vectors, dtype=dtype, device=device),
                KEY.CELL: torch.as_tensor(graph.cells, dtype=dtype, device=device),
                KEY.CELL_SHIFT: torch.as_tensor(graph.shifts, dtype=dtype, device=device),
                KEY.CELL_VOLUME: torch.as_tensor(volumes, dtype=dtype, device=device),
                KEY.NUM_ATOMS: torch.as_tensor(graph.n_atoms, dtype=torch.int64, device=device),
                KEY.BATCH: torch.as_tensor(graph.batch, dtype=torch.int64, device=device),
            },
        )
        if self.modal is not None:
            data[KEY.DATA_MODALITY] = [self.modal] * graph.n_systems
        return data

    def _forward(self, graph: BatchedGraph, need_grad: bool) -> AtomGraphData:
        """Run the model; without ``need_grad`` skip its force/stress module and build no autograd graph."""
        if need_grad:
            # Forces and the virial are autograd derivatives w.r.t. the edge vectors; this must work even when the
            # caller runs under no_grad or inference_mode, so the input tensors are made outside inference mode too.
            with torch.inference_mode(False), torch.enable_grad():
                return self.model(self._to_sevenn(graph))
        with torch.no_grad():
            data = self.model._preprocess(self._to_sevenn(graph))
            for module in self.model:
                if not isinstance(module, ForceStressOutputFromEdge):
                    data = module(data)
        return data


def _wants_cueq(card: ModelCard) -> bool:
    """Whether to build the model with cuEquivariance kernels (``options.cueq``: false, the default, or true)."""
    choice = str(card.options.get("cueq", "false")).lower()
    if choice not in ("true", "false"):
        raise CardError(f"{card.name}: options.cueq must be true or false, not {choice!r}")
    return choice == "true"


def _numpy(output: AtomGraphData, key: str, shape: tuple[int, int]) -> np.ndarray:
    """``output[key]`` as float64 numpy, or zeros of ``shape`` when the model left it unset."""
    if key not in output:
        return np.zeros(shape)
    return output[key].detach().cpu().double().numpy().reshape(shape)
