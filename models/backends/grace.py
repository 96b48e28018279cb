"""GRACE backend: evaluates a batch of structures with a GRACE model (tensorpotential, TensorFlow) in one call.

Format. GRACE models are published as TensorFlow SavedModels packed in a ``<name>-model.tar.gz`` archive (what
``tensorpotential``'s ``grace_models download`` fetches and unpacks into ``~/.cache/grace``): a folder with
``saved_model.pb``, ``variables/`` and ``metadata.yaml`` (elements, cutoff, per-bond cutoffs). The card's
checkpoint is that archive, hash-pinned like every checkpoint. It is read once, its bytes checked against the
card's sha256 again, and unpacked with ``tarfile``'s ``data`` filter (no absolute paths, no ``..``, no links out,
no device files) into a private temporary folder, which is deleted as soon as TensorFlow has loaded the model.

``weights_only`` does not apply: a SavedModel is no torch file but a serialised TensorFlow graph with its
variables. Loading it unpickles nothing and runs no Python code from the file, but the graph is a program: a
crafted one could use TensorFlow's file operations when evaluated. What stands instead is what stands for MACE:
only an archive in the model directory whose sha256 matches the card or the user's pin is loaded, and only in
the GRACE environment.

Batching. The model is loaded by tensorpotential's own ``TPCalculator`` (which reads the elements, the cutoff
and the per-bond cutoffs from the model), and its data path is used as tensorpotential's training and
feature-extraction batches use it: ``GeometricalDataBuilder.extract_from_ase_atoms`` per structure (matscipy's
neighbour list, a molecule boxed as the package boxes it), ``join_to_batch`` to pack all structures into one
graph, ``pad_batch`` to pad it, and one call of the SavedModel's ``compute`` signature for the whole batch. That
signature sums the energy and the virial over everything it is given (it was exported for one structure), so
they are summed per structure here from what it also returns: the per-atom energies and the per-bond pair
forces, with the package's own virial formula (``tpmodel.compute_batch_virials_from_pair_forces``); forces are
per atom already. Structures share no bond, so each one's numbers are those ``TPCalculator`` gives it alone.
Batches are padded to a ladder of sizes (at most 25 % padding), as ``TPCalculator`` pads single structures: the
signature is XLA-compiled once per padded shape, so a new shape costs a compile (seconds on a CPU).

Deviations from ``TPCalculator``, both where it is wrong for mlipserve's inputs: a partially periodic system (a
slab) keeps its open axes open (``TPCalculator`` makes every axis of such a cell periodic, so a slab whose
vacuum is thinner than the cutoff sees its own images), and a molecule gets no stress (``TPCalculator`` reports
one for the box it invents). The signature always computes forces and the virial: an energy-only request costs
the same and returns the energy alone.

Precision: ``dtype`` is that of the model's weights (GRACE models come in float32 and float64; bond vectors are
float64 in both). ``dtype`` and ``device`` are torch objects because the Potential contract names them so; here
they only label what TensorFlow runs (``float32``/``float64``, ``cpu``/``cuda:N``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers

from ..cards import CardError, ModelCard
from ..potential import ALL_PROPERTIES, Potential, Prediction, divide_by_volume, split_batch
from ..system import AtomicSystem

log = logging.getLogger(__name__)

# TensorFlow prints an INFO line per CPU feature and oneDNN notice on import; a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

# tensorpotential must come before TensorFlow: on import it sets TF_USE_LEGACY_KERAS, which TensorFlow reads once.
# It also prints what it configured; that goes to the log instead of the worker's stdout.
with contextlib.redirect_stdout(io.StringIO()) as _banner:
    try:  # tensorpotential is the optional dependency of this family; the registry reports a missing package clearly
        from tensorpotential import constants as tp
        from tensorpotential.calculator.asecalculator import TPCalculator
    except ImportError as error:  # pragma: no cover - exercised only without tensorpotential
        raise ImportError(f"the GRACE backend needs the 'tensorpotential' package: {error}") from error
log.debug("tensorpotential: %s", _banner.getvalue().strip())

import tensorflow as tf  # noqa: E402  (after tensorpotential, see above)

#: The file of a SavedModel, which marks its folder in an archive.
SAVED_MODEL = "saved_model.pb"


def load_potential(card: ModelCard, checkpoint: Path, device: torch.device) -> GRACEPotential:
    """Unpack the GRACE archive ``checkpoint`` (already hash-checked) and load its SavedModel on ``device``."""
    return GRACEPotential(card, checkpoint, device)


class GRACEPotential(Potential):
    """A GRACE SavedModel that evaluates whole batches through one call of its ``compute`` signature."""

    implemented_properties = ALL_PROPERTIES

    def __init__(self, card: ModelCard, checkpoint: Path, device: torch.device | str):
        self.card = card
        self.device = torch.device(device)
        self._tf_device = _tf_device(self.device)
        _share_torch_threads()
        with tempfile.TemporaryDirectory(prefix="mlipserve-grace-") as folder:
            saved_model = _unpack(card, checkpoint, Path(folder))
            with tf.device(self._tf_device), contextlib.redirect_stdout(io.StringIO()):
                try:
                    calculator = TPCalculator(model=str(saved_model), enable_uq_if_available=False)
                except Exception as error:
                    raise CardError(
                        f"{card.name}: {checkpoint.name} holds no GRACE model loadable here: {error}"
                    ) from None
            self.dtype = _weights_dtype(card, saved_model)
        self._compute = calculator.models[0].compute
        self._inputs = list(calculator.data_keys)
        self._builder = calculator.geom_data_builder
        self.elements = frozenset(atomic_numbers[symbol] for symbol in calculator.element_map)
        self.cutoff = float(calculator.cutoff)

    def predict_batch(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES
    ) -> list[Prediction]:
        """Evaluate all ``systems`` with one call of the model; split energies, forces and virials per structure."""
        builder = self._builder
        batch = builder.join_to_batch([builder.extract_from_ase_atoms(self._atoms(system)) for system in systems])
        n_atoms = int(batch[tp.N_ATOMS_BATCH_REAL])
        n_bonds = int(batch[tp.N_NEIGHBORS_REAL])
        atom_owner = np.asarray(batch[tp.ATOMS_TO_STRUCTURE_MAP])
        bond_owner = np.asarray(batch[tp.BONDS_TO_STRUCTURE_MAP])
        bond_vectors = np.array(batch[tp.BOND_VECTOR], dtype=np.float64)
        # Padded bonds join a padding atom (the last), which must exist: at least one padded atom.
        sizes = {
            tp.PAD_MAX_N_STRUCTURES: len(systems) + 1,
            tp.PAD_MAX_N_ATOMS: padded_size(n_atoms + 1),
            tp.PAD_MAX_N_NEIGHBORS: padded_size(n_bonds),
        }
        builder.pad_batch(batch, sizes)
        inputs = {key: tf.constant(batch[key]) for key in self._inputs}
        with tf.device(self._tf_device):
            output = self._compute(inputs)

        atomic_energy = output[tp.PREDICT_ATOMIC_ENERGY].numpy().astype(np.float64).reshape(-1)[:n_atoms]
        energy = np.bincount(atom_owner, weights=atomic_energy, minlength=len(systems))
        forces = output[tp.PREDICT_FORCES].numpy().astype(np.float64)[:n_atoms]
        pair_forces = output["z_" + tp.PREDICT_PAIR_FORCES].numpy().astype(np.float64)[:n_bonds]
        stress = divide_by_volume(systems, -_virials(bond_vectors, pair_forces, bond_owner, len(systems)))
        return split_batch(systems, properties, energy, forces, stress)

    def _atoms(self, system: AtomicSystem) -> Atoms:
        """``system`` as the ase.Atoms that tensorpotential's data builder reads, with its open axes kept open.

        A crystal is passed as it is, and a molecule too (the builder puts it in a box larger than twice the
        cutoff). The builder makes every axis of a partly periodic cell periodic, so each open axis of a slab or
        wire gets a cell vector orthogonal to the periodic ones and longer than the system's extent along it plus
        the cutoff: no atom sees an image across it. Bond vectors, and so the results, do not depend on the
        length chosen; the stress is divided by the volume of the given cell (:func:`divide_by_volume`).
        """
        atoms = Atoms(numbers=system.numbers, positions=system.positions, cell=system.cell, pbc=system.pbc)
        if system.pbc.all() or not system.pbc.any():
            return atoms
        periodic = system.cell[system.pbc]
        open_directions = np.linalg.svd(periodic)[2][len(periodic) :]  # orthonormal, orthogonal to periodic rows
        cell = system.cell.copy()
        for axis, direction in zip(np.flatnonzero(~system.pbc), open_directions, strict=True):
            extent = float(np.ptp(system.positions @ direction))
            cell[axis] = direction * (extent + 2 * self.cutoff + 1.0)
        return Atoms(numbers=system.numbers, positions=system.positions, cell=cell, pbc=True)


def padded_size(n: int) -> int:
    """``n`` rounded up to the ladder 16, 20, 24, 28, 32, 40, 48, ... (four steps an octave): at most 25 %
    padding, and few enough distinct shapes that XLA compiles seldom."""
    if n <= 16:
        return 16
    step = 2 ** (math.ceil(math.log2(n)) - 3)
    return math.ceil(n / step) * step


def _virials(bond_vectors: np.ndarray, pair_forces: np.ndarray, owner: np.ndarray, n_systems: int) -> np.ndarray:
    """Per-structure virials (k, 3, 3) from the real bonds' vectors r and pair forces f, as tensorpotential forms
    them (``compute_batch_virials_from_pair_forces``): the diagonal Σ r_a f_a and the upper triangle Σ r_a f_b
    (a < b), mirrored into the lower one."""
    products = np.einsum("ba,bc->bac", bond_vectors[: len(pair_forces)], pair_forces)
    sums = np.zeros((n_systems, 3, 3))
    np.add.at(sums, owner[: len(pair_forces)], products)
    upper = np.triu(sums)
    return upper + np.transpose(np.triu(sums, 1), (0, 2, 1))


def _weights_dtype(card: ModelCard, saved_model: Path) -> torch.dtype:
    """float64 if every floating-point variable of the SavedModel is float64, else float32 (its coarsest
    precision), read from the variables' checkpoint (the loaded object does not list them)."""
    reader = tf.train.load_checkpoint(str(saved_model / "variables" / "variables"))
    dtypes = {dtype for dtype in reader.get_variable_to_dtype_map().values() if dtype.is_floating}
    if not dtypes:
        raise CardError(f"{card.name}: the GRACE model has no floating-point weights")
    return torch.float64 if dtypes == {tf.float64} else torch.float32


def _tf_device(device: torch.device) -> str:
    """The TensorFlow device name of ``device``; a GPU must be one TensorFlow sees."""
    if device.type == "cpu":
        return "/CPU:0"
    if device.type == "cuda":
        index = device.index or 0
        gpus = tf.config.list_physical_devices("GPU")
        if index >= len(gpus):
            raise RuntimeError(
                f"GRACE runs on TensorFlow, which sees {len(gpus)} GPU(s) here, so cannot use {device}; this "
                "environment's TensorFlow is the CPU build (deploy/grace/constraints.txt). Serve on the CPU, or "
                "install tensorflow[and-cuda] into the GRACE environment on a CUDA machine"
            )
        return f"/GPU:{index}"
    raise RuntimeError(f"GRACE runs on TensorFlow, which has no {device.type} device; use cpu or cuda")


def _share_torch_threads() -> None:
    """Give TensorFlow's thread pool as many threads as torch has (``mlipserve worker --threads`` sets torch's).

    TensorFlow fixes its pools when it first runs an operation; a second GRACE model in the process keeps them.
    """
    try:
        tf.config.threading.set_intra_op_parallelism_threads(torch.get_num_threads())
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        log.debug("TensorFlow's thread pools are already set; keeping them")


def _unpack(card: ModelCard, checkpoint: Path, folder: Path) -> Path:
    """Unpack the archive into ``folder`` and return the folder of its SavedModel.

    The bytes unpacked are the bytes hashed: the file is read once and checked against the card's sha256 again,
    in case it was replaced after the registry checked it.
    """
    data = checkpoint.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != card.sha256:
        raise CardError(
            f"{card.name}: checkpoint {checkpoint} changed while it was loaded (sha256 {digest}, the card says "
            f"{card.sha256}); refusing to load it"
        )
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            archive.extractall(folder, filter="data")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise CardError(
            f"{card.name}: {checkpoint.name} is not a GRACE model archive (a .tar.gz of a SavedModel folder, as "
            f"published): {error}"
        ) from None
    found = sorted(path.parent for path in folder.rglob(SAVED_MODEL))
    if len(found) != 1:
        raise CardError(
            f"{card.name}: {checkpoint.name} should hold one SavedModel ({SAVED_MODEL}), it holds {len(found)}"
        )
    return found[0]
