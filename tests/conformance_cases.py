"""The checks of the Potential contract that ``tests/test_conformance.py`` runs on every model family.

This module needs only numpy, ase and ``mlipserve.models`` (no pytest, no server), so that the same checks also run
inside a family's own environment:

    python tests/conformance_cases.py --model-dir DIR --model NAME --family FAMILY --out RESULTS.json

loads the model through the registry, runs every check and writes one JSON object ``{check: {"ok", "message",
"measured"}}`` (the MACE case runs it with ``.venv-mace/bin/python``).

A family's conformance case is its structures (:data:`STRUCTURES`) and its dtype and stress support
(:data:`TRAITS`); the tolerances follow the dtype (:data:`TOLERANCES`).
"""

from __future__ import annotations

import argparse
import json
import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.build import bulk
from mlipserve.models.loading import load_model
from mlipserve.models.potential import ALL_PROPERTIES, ENERGY, Potential, Prediction
from mlipserve.models.registry import ModelRegistry
from mlipserve.models.system import AtomicSystem


@dataclass(frozen=True)
class Tolerances:
    """What "equal" and "the derivative" mean for one dtype; every bound is absolute, in ASE units."""

    energy: float  # eV/atom: the same structure evaluated twice (batched, moved, rotated) ...
    energy_relative: float  # ... plus this fraction of |E| (the dtype's rounding of a total energy)
    forces: float  # eV/Å
    stress: float  # eV/Å³
    step: float  # Å: central finite-difference displacement
    strain: float  # central finite-difference strain
    fd_forces: float  # eV/Å: |−ΔE/Δx − F| allowed ...
    fd_stress: float  # eV/Å³: |ΔE/(VΔε) − σ| allowed ...
    fd_relative: float  # ... plus this fraction of the largest checked |F| or |σ|, plus the energies' precision
    #                     divided by the step (or the strain times V)

    def energy_precision(self, energy: float, n_atoms: int) -> float:
        """How far two evaluations of the same energy may differ, eV."""
        return self.energy * n_atoms + self.energy_relative * abs(energy)

    def rounding(self, energy: float) -> float:
        """How much rounding may move one energy, eV: what a finite difference divides by its step."""
        return self.energy_relative * abs(energy)


TOLERANCES = {
    "float64": Tolerances(
        energy=1e-10,
        energy_relative=1e-13,
        forces=1e-9,
        stress=1e-10,
        step=1e-5,
        strain=1e-5,
        fd_forces=1e-7,
        fd_stress=1e-8,
        fd_relative=1e-6,
    ),
    "float32": Tolerances(
        # float32 sums over hundreds of edges: CHGNet's 2-atom Si cell, moved by 12 random shifts and rotations,
        # changes its energy by up to 1.2e-5 eV (6e-6 eV/atom), and which shift is worst varies with the CPU's
        # kernels; 1e-5 eV/atom is the float32 bound of test_sevennet_backend.py, far below any physical effect
        energy=1e-5,
        energy_relative=5e-7,
        forces=5e-4,
        stress=2e-5,
        step=5e-3,
        strain=1e-3,
        fd_forces=2e-3,
        fd_stress=1e-4,
        fd_relative=1e-2,
    ),
}


@dataclass(frozen=True)
class Traits:
    """What the contract expects of one family's models."""

    dtype: str  # "float32" | "float64": the precision the family evaluates in by default
    stress: bool = True  # whether its conformance model computes a stress (a model deployed without one answers None)
    #: Whether the architecture is rotation-equivariant by construction. ORB is not (it learns approximate
    #: equivariance from rotated training data): a random model of it rotates only approximately.
    rotation_invariant: bool = True


# ---------------------------------------------------------------------------------------------------------------
# Structures: small, rattled, strained (triclinic) periodic cells and one molecule or cluster per family, built
# here with ase (never a fixture's own training or reference frames).


def crystal(
    prototype: Atoms,
    elements: Sequence[str] | None,
    seed: int,
    strain: float = 0.04,
    rattle: float = 0.1,
    left_handed: bool = False,
) -> Atoms:
    """``prototype`` with random species from ``elements`` (kept if None), a random non-symmetric deformation of
    about ``strain`` (the cell turns triclinic) and atoms rattled by about ``rattle`` Å; ``left_handed`` swaps two
    cell vectors (the same crystal, described by a cell of negative determinant)."""
    rng = np.random.default_rng(seed)
    atoms = prototype.copy()
    if elements is not None:
        symbols = list(rng.choice(list(elements), len(atoms)))
        symbols[: len(elements)] = list(elements)[: len(atoms)]  # every element at least once where it fits
        atoms.set_chemical_symbols(symbols)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain * rng.standard_normal((3, 3))), scale_atoms=True)
    atoms.rattle(rattle, seed=seed)
    atoms.pbc = True
    if left_handed:
        atoms.set_cell(atoms.cell.array[[1, 0, 2]], scale_atoms=False)
    return atoms


def cluster(symbols: str, bond: float, seed: int, rattle: float = 0.1) -> Atoms:
    """A non-periodic cluster: atoms on a compact fcc-like arrangement with nearest neighbours ``bond`` Å apart."""
    sites = np.array([[0, 0, 0], [1, 1, 0], [1, 0, 1], [0, 1, 1], [2, 1, 1], [1, 2, 1], [1, 1, 2], [2, 2, 0]], float)
    atoms = Atoms(symbols)
    atoms.positions = sites[: len(atoms)] * bond / np.sqrt(2)
    atoms.rattle(rattle, seed=seed)
    return atoms


def molecule_ch4(seed: int) -> Atoms:
    positions = 0.63 * np.array([[0, 0, 0], [1, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1]], float)
    atoms = Atoms("CH4", positions=positions)
    atoms.rattle(0.05, seed=seed)
    return atoms


def universal_structures() -> list[Atoms]:
    """For models trained on the periodic table (SevenNet-0, CHGNet): Si, MgO, a ternary cell and CH4."""
    return [
        crystal(bulk("Si", "diamond", a=5.43), None, seed=1),
        crystal(bulk("MgO", "rocksalt", a=4.21, cubic=True), None, seed=2, strain=0.03, left_handed=True),
        crystal(bulk("Cu", "fcc", a=3.7, cubic=True), ("Cu", "Al", "Ni"), seed=3),
        molecule_ch4(seed=4),
    ]


def hea_structures() -> list[Atoms]:
    """Fe-Co-Ni-Cr-Al alloys: a bcc pair, a 2×1×1 fcc cell of 8 atoms, and a 6-atom cluster."""
    elements = ("Fe", "Co", "Ni", "Cr", "Al")
    return [
        crystal(bulk("Fe", "bcc", a=2.87, cubic=True), ("Fe", "Al"), seed=11),
        crystal(bulk("Ni", "fcc", a=3.58, cubic=True) * (2, 1, 1), elements, seed=12, left_handed=True),
        cluster("FeCoNiCrAlFe", bond=2.5, seed=13),
    ]


def hfo_structures() -> list[Atoms]:
    """Hf-O: a fluorite HfO2 primitive cell, an 8-atom rocksalt HfO cell and an Hf2O3 cluster."""
    return [
        crystal(bulk("HfO2", "fluorite", a=5.1), None, seed=21),
        crystal(bulk("HfO", "rocksalt", a=4.6, cubic=True), None, seed=22, strain=0.03, left_handed=True),
        cluster("Hf2O3", bond=2.1, seed=23),
    ]


def inp_structures() -> list[Atoms]:
    """In-P: a zincblende primitive cell, the 8-atom cubic cell with swapped species, and an In2P2 cluster."""
    return [
        crystal(bulk("InP", "zincblende", a=5.87), None, seed=51),
        crystal(bulk("InP", "zincblende", a=5.87, cubic=True), ("In", "P"), seed=52, strain=0.03, left_handed=True),
        cluster("InPInP", bond=2.6, seed=53),
    ]


def cu2s_structures() -> list[Atoms]:
    """Cu-S: an antifluorite Cu2S primitive cell, a 4-atom fcc cell of mixed species and a Cu3S2 cluster."""
    return [
        crystal(bulk("SCu2", "fluorite", a=5.6), None, seed=61),
        crystal(bulk("Cu", "fcc", a=3.9, cubic=True), ("Cu", "S"), seed=62, strain=0.03, left_handed=True),
        cluster("CuSCuSCu", bond=2.3, seed=63),
    ]


def cu_structures() -> list[Atoms]:
    """Cu: an fcc primitive cell, a strained 2×1×1 cubic cell of 8 atoms and a 5-atom cluster."""
    return [
        crystal(bulk("Cu", "fcc", a=3.6), None, seed=71),
        crystal(bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1), None, seed=72, strain=0.03, left_handed=True),
        cluster("Cu5", bond=2.5, seed=73),
    ]


def licl_structures() -> list[Atoms]:
    """Li-Cl: a rocksalt primitive cell, the 8-atom cubic cell and a Li2Cl2 cluster."""
    return [
        crystal(bulk("LiCl", "rocksalt", a=5.14), None, seed=31),
        crystal(bulk("LiCl", "rocksalt", a=5.14, cubic=True), None, seed=32, strain=0.03, left_handed=True),
        cluster("LiClClLi", bond=2.3, seed=33),
    ]


def mace_structures() -> list[Atoms]:
    """For the small random MACE model of H, O, Si, Cu: Si, an 8-atom Cu-Si cell, a Cu2O-like cell and H2O2."""
    peroxide = Atoms("H2O2", positions=[[0.9, 0.4, 0.1], [-0.9, 0.5, -0.2], [0.7, -0.3, 0.0], [-0.7, -0.2, 0.1]])
    peroxide.rattle(0.05, seed=44)
    return [
        crystal(bulk("Si", "diamond", a=5.43), None, seed=41),
        crystal(bulk("Cu", "fcc", a=3.7, cubic=True) * (2, 1, 1), ("Cu", "Si"), seed=42, left_handed=True),
        crystal(bulk("Cu", "bcc", a=3.0, cubic=True), ("Cu", "O"), seed=43),
        peroxide,
    ]


#: Every family's structures; a family added to the registry adds its own here.
STRUCTURES: dict[str, Callable[[], list[Atoms]]] = {
    "sevennet": universal_structures,
    "chgnet": universal_structures,
    "mtp": hea_structures,
    "ace": hfo_structures,
    "snap": inp_structures,  # LAMMPS' InP SNAP (chemflag) with the ZBL of its include file
    "nequip": licl_structures,
    "mace": mace_structures,
    "fairchem": mace_structures,  # its random model covers H O Si Cu, as MACE's does
    "orb": universal_structures,
    "m3gnet": mace_structures,  # its random model covers H O Si Cu
    "mattersim": universal_structures,
    "grace": mace_structures,
    "pair": hea_structures,  # a Morse model of the five elements
    "gap": hfo_structures,  # a small distance_2b + SOAP GAP of Hf and O (tests/data/gap)
    "hdnnp": cu2s_structures,  # n2p2's Cu2S HDNNP (narrow and wide angular functions, cutoff type 6)
    "committee": cu_structures,  # three Cu MTPs served as one committee (mean energy, forces and stress)
}

#: Every family's precision and stress support (of the model its conformance case loads).
TRAITS: dict[str, Traits] = {
    "sevennet": Traits("float32"),
    "chgnet": Traits("float32"),
    "mtp": Traits("float64"),
    "ace": Traits("float64"),
    "snap": Traits("float64"),
    "nequip": Traits("float32", stress=False),  # the nequip 0.5.6 LiCl file was deployed without StressForceOutput
    "mace": Traits("float32"),
    "fairchem": Traits("float32"),
    "orb": Traits("float32", rotation_invariant=False),
    "m3gnet": Traits("float32"),
    "mattersim": Traits("float32"),
    "grace": Traits("float64"),
    "pair": Traits("float64"),
    "gap": Traits("float64"),
    "hdnnp": Traits("float64"),
    "committee": Traits("float64"),
}


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def predict(potential: Potential, structures: Sequence[Atoms], properties=ALL_PROPERTIES) -> list[Prediction]:
    return potential.predict([AtomicSystem.from_ase(atoms) for atoms in structures], properties)


def energies(potential: Potential, structures: Sequence[Atoms]) -> np.ndarray:
    return np.array([p.energy for p in predict(potential, structures, (ENERGY,))])


def tolerances(potential: Potential) -> Tolerances:
    return TOLERANCES[str(potential.dtype).removeprefix("torch.")]


def random_rotation(seed: int) -> np.ndarray:
    """A random rotation matrix (orthogonal, determinant +1)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def has_stress(atoms: Atoms, traits: Traits) -> bool:
    return traits.stress and bool(atoms.pbc.any())


def assert_close(label: str, actual, expected, tol: float) -> float:
    """Assert ``|actual - expected| <= tol`` elementwise; return the largest difference."""
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    assert actual.shape == expected.shape, f"{label}: shape {actual.shape} != {expected.shape}"
    diff = float(np.abs(actual - expected).max()) if actual.size else 0.0
    assert diff <= tol, f"{label}: differs by {diff:.3e} (tolerance {tol:.1e})"
    return diff


def compare(label: str, a: Prediction, b: Prediction, n_atoms: int, tol: Tolerances, rotation=None) -> dict:
    """Assert that ``b`` is ``a`` (``a`` rotated by ``rotation``): energy, forces and stress, within ``tol``."""
    rotation = np.eye(3) if rotation is None else rotation
    precision = tol.energy_precision(a.energy, n_atoms)
    worst = {"energy": assert_close(f"{label} energy", b.energy, a.energy, precision) / n_atoms}
    worst["forces"] = assert_close(f"{label} forces", b.forces, a.forces @ rotation.T, tol.forces)
    assert (a.stress is None) == (b.stress is None), f"{label}: stress is None in one result only"
    if a.stress is not None:
        worst["stress"] = assert_close(f"{label} stress", b.stress, rotation @ a.stress @ rotation.T, tol.stress)
    return worst


def merge(total: dict, worst: dict) -> dict:
    for key, value in worst.items():
        total[key] = max(total.get(key, 0.0), value)
    return total


# ---------------------------------------------------------------------------------------------------------------
# The checks. Each takes the loaded potential, its structures and its family's traits, raises AssertionError with the
# numbers when the contract is broken, and returns the largest deviations it measured.


def check_outputs(potential: Potential, structures: Sequence[Atoms], traits: Traits) -> dict:
    """Shapes and dtypes: energy a Python float, forces (n, 3) float64, stress (3, 3) float64 for a periodic
    system (None for a molecule), all finite; an energy-only request gives the same energy and nothing else."""
    dtype = str(potential.dtype).removeprefix("torch.")
    assert dtype == traits.dtype, f"the model evaluates in {dtype}, its family in {traits.dtype}"
    tol = tolerances(potential)
    predictions = predict(potential, structures)
    assert len(predictions) == len(structures), f"{len(predictions)} predictions for {len(structures)} systems"
    for index, (atoms, p) in enumerate(zip(structures, predictions, strict=True)):
        label = f"structure {index} ({atoms.get_chemical_formula()})"
        assert type(p.energy) is float, f"{label}: energy is {type(p.energy).__name__}, not a Python float"
        assert math.isfinite(p.energy), f"{label}: energy {p.energy}"
        assert isinstance(p.forces, np.ndarray), f"{label}: forces are {type(p.forces).__name__}"
        assert p.forces.shape == (len(atoms), 3), f"{label}: forces have shape {p.forces.shape}"
        assert p.forces.dtype == np.float64, f"{label}: forces are {p.forces.dtype}"
        assert np.isfinite(p.forces).all(), f"{label}: non-finite forces"
        if has_stress(atoms, traits):
            assert isinstance(p.stress, np.ndarray), f"{label}: stress is {type(p.stress).__name__}"
            assert p.stress.shape == (3, 3), f"{label}: stress has shape {p.stress.shape}"
            assert p.stress.dtype == np.float64, f"{label}: stress is {p.stress.dtype}"
            assert np.isfinite(p.stress).all(), f"{label}: non-finite stress"
            asymmetry = float(np.abs(p.stress - p.stress.T).max())
            assert asymmetry <= tol.stress, f"{label}: stress asymmetric by {asymmetry:.2e} eV/Å³"
        else:
            assert p.stress is None, f"{label}: stress {p.stress} where none is expected"
    energy_only = predict(potential, structures, (ENERGY,))
    worst = 0.0
    for index, (atoms, full, alone) in enumerate(zip(structures, predictions, energy_only, strict=True)):
        assert alone.forces is None and alone.stress is None, f"structure {index}: energy-only request gave more"
        precision = tol.energy_precision(full.energy, len(atoms))
        worst = max(worst, assert_close(f"structure {index} energy-only", alone.energy, full.energy, precision))
    return {"energy": worst}


def check_batch(potential: Potential, structures: Sequence[Atoms], traits: Traits) -> dict:
    """One batch of all structures (periodic and molecules mixed) equals each structure evaluated alone."""
    tol = tolerances(potential)
    batch = predict(potential, structures)
    worst: dict = {}
    for index, atoms in enumerate(structures):
        [alone] = predict(potential, [atoms])
        merge(worst, compare(f"structure {index} batched vs alone", alone, batch[index], len(atoms), tol))
    return worst


def check_translation(potential: Potential, structures: Sequence[Atoms], traits: Traits) -> dict:
    """Moving every atom by the same vector (some leave the cell; nothing is wrapped) changes nothing, and the
    forces of each structure sum to zero."""
    tol = tolerances(potential)
    shift = np.array([1.7, -2.9, 3.3])
    moved = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.positions += shift
        moved.append(atoms)
    worst: dict = {}
    for index, (atoms, a, b) in enumerate(
        zip(structures, predict(potential, structures), predict(potential, moved), strict=True)
    ):
        merge(worst, compare(f"structure {index} translated", a, b, len(atoms), tol))
        net = assert_close(f"structure {index} net force", a.forces.sum(axis=0), np.zeros(3), tol.forces * len(atoms))
        worst["net_force"] = max(worst.get("net_force", 0.0), net)
    return worst


def check_rotation(potential: Potential, structures: Sequence[Atoms], traits: Traits) -> dict:
    """Rotating positions and cell by a random rotation R leaves the energy and turns the forces into F Rᵀ and the
    stress into R σ Rᵀ."""
    tol = tolerances(potential)
    if not traits.rotation_invariant:
        return {"skipped": "the architecture is not rotation-equivariant by construction"}
    rotation = random_rotation(seed=5)
    rotated = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.positions = atoms.positions @ rotation.T
        atoms.cell = atoms.cell.array @ rotation.T
        rotated.append(atoms)
    worst: dict = {}
    for index, (atoms, a, b) in enumerate(
        zip(structures, predict(potential, structures), predict(potential, rotated), strict=True)
    ):
        merge(worst, compare(f"structure {index} rotated", a, b, len(atoms), tol, rotation))
    return worst


def forces_by_differences(
    potential: Potential, structures: Sequence[Atoms], step: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
    """−∂E/∂x by central differences of ``step`` Å on each structure's three largest force components (on distinct
    atoms) and one at random: (differences, the model's forces there, the energy precision there, which ones)."""
    rng = np.random.default_rng(6)
    tol = tolerances(potential)
    displaced, analytic, precision, which = [], [], [], []
    for index, (atoms, p) in enumerate(zip(structures, predict(potential, structures), strict=True)):
        picks: list[int] = []
        for flat in np.argsort(-np.abs(p.forces).ravel()):
            if len(picks) < 3 and all(flat // 3 != other // 3 for other in picks):
                picks.append(int(flat))
        picks.append(int(rng.integers(p.forces.size)))
        for flat in picks:
            atom, axis = divmod(flat, 3)
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[atom, axis] += sign * step
                displaced.append(moved)
            analytic.append(p.forces[atom, axis])
            precision.append(tol.rounding(p.energy))
            which.append((index, atom, axis))
    e = energies(potential, displaced).reshape(-1, 2)
    return -(e[:, 0] - e[:, 1]) / (2 * step), np.array(analytic), np.array(precision), which


def check_forces_gradient(potential: Potential, structures: Sequence[Atoms], traits: Traits) -> dict:
    """F = −∂E/∂x by central differences on a few components per structure, chosen among the largest forces so
    that a sign error, a missing factor or a wrong unit cannot pass."""
    tol = tolerances(potential)
    differences, analytic, precision, which = forces_by_differences(potential, structures, tol.step)
    largest = float(np.abs(analytic).max())
    # truncation and the model's own error, plus the energies' rounding divided by the step
    allowed = tol.fd_forces + tol.fd_relative * largest + precision / tol.step
    errors = np.abs(differences - analytic)
    worst = int((errors / allowed).argmax())
    index, atom, axis = which[worst]
    assert errors[worst] <= allowed[worst], (
        f"structure {index} atom {atom} axis {'xyz'[axis]}: force {analytic[worst]:.6f} eV/Å, −dE/dx by central "
        f"differences {differences[worst]:.6f} eV/Å (step {tol.step} Å; |difference| {errors[worst]:.2e} > "
        f"{allowed[worst]:.1e})"
    )
    assert largest > 5 * allowed.max(), f"forces too small to test: largest |F| {largest:.2e} eV/Å"
    return {"fd_forces": float(errors.max()), "allowed": float(allowed.max()), "largest_force": largest}


def strained(atoms: Atoms, i: int, j: int, amount: float) -> Atoms:
    """``atoms`` under the symmetric strain ε_ij = ε_ji = ``amount`` (ε_ii = amount on the diagonal), applied to the
    cell's rows and the positions alike."""
    epsilon = np.zeros((3, 3))
    epsilon[i, j] += amount / (1 if i == j else 2)
    epsilon[j, i] += 0 if i == j else amount / 2
    atoms = atoms.copy()
    deformation = np.eye(3) + epsilon
    atoms.set_cell(atoms.cell.array @ deformation, scale_atoms=False)
    atoms.positions = atoms.positions @ deformation
    return atoms


STRAINS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def stress_by_differences(
    potential: Potential, periodic: Sequence[Atoms], strain: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(1/V) ∂E/∂ε by central differences of a symmetric ``strain``, the six components of each periodic
    structure: (differences, the model's stress, the energy precision divided by V), each (structures, 6)."""
    tol = tolerances(potential)
    reference = predict(potential, periodic)
    displaced = [strained(atoms, i, j, sign * strain) for atoms in periodic for i, j in STRAINS for sign in (1, -1)]
    e = energies(potential, displaced).reshape(len(periodic), len(STRAINS), 2)
    volumes = np.array([atoms.get_volume() for atoms in periodic])[:, None]
    analytic = np.array([[p.stress[i, j] for i, j in STRAINS] for p in reference])
    precision = np.array([tol.rounding(p.energy) for p in reference])
    return (e[:, :, 0] - e[:, :, 1]) / (2 * strain) / volumes, analytic, precision[:, None] / volumes


def check_stress_strain_derivative(potential: Potential, structures: Sequence[Atoms], traits: Traits) -> dict:
    """σ = (1/V) ∂E/∂ε (ASE's sign: tensile positive) by central differences of a symmetric strain, all six
    components of every periodic structure, whose stresses are large enough that a sign or unit error fails."""
    tol = tolerances(potential)
    periodic = [atoms for atoms in structures if atoms.pbc.any()]
    if not traits.stress:
        assert all(p.stress is None for p in predict(potential, periodic)), "stress from a model without one"
        return {"skipped": "the model computes no stress"}
    differences, analytic, precision = stress_by_differences(potential, periodic, tol.strain)
    largest = float(np.abs(analytic).max())
    allowed = np.broadcast_to(tol.fd_stress + tol.fd_relative * largest + precision / tol.strain, analytic.shape)
    errors = np.abs(differences - analytic)
    s, c = np.unravel_index(int((errors / allowed).argmax()), errors.shape)
    i, j = STRAINS[c]
    assert errors[s, c] <= allowed[s, c], (
        f"periodic structure {s} component {'xyz'[i]}{'xyz'[j]}: stress {analytic[s, c]:.6e} eV/Å³, (1/V) dE/dε by "
        f"central differences {differences[s, c]:.6e} eV/Å³ (strain {tol.strain}; |difference| {errors[s, c]:.2e} > "
        f"{allowed[s, c]:.1e})"
    )
    assert largest > 5 * allowed.max(), f"stress too small to test: largest |σ| {largest:.2e} eV/Å³"
    return {"fd_stress": float(errors.max()), "allowed": float(allowed.max()), "largest_stress": largest}


#: The checks by name, in the order they run; ``test_conformance.py`` has one test function for each.
CHECKS: dict[str, Callable[[Potential, Sequence[Atoms], Traits], dict]] = {
    "outputs": check_outputs,
    "batch": check_batch,
    "translation": check_translation,
    "rotation": check_rotation,
    "forces_gradient": check_forces_gradient,
    "stress_strain_derivative": check_stress_strain_derivative,
}


def run_all(potential: Potential, family: str) -> dict[str, dict]:
    """Every check on ``family``'s structures: ``{check: {"ok": bool, "message": str, "measured": dict}}``."""
    structures = STRUCTURES[family]()
    results = {}
    for name, check in CHECKS.items():
        try:
            results[name] = {"ok": True, "message": "", "measured": check(potential, structures, TRAITS[family])}
        except Exception as error:  # reported to the test process, which fails with the message
            message = str(error) if isinstance(error, AssertionError) else traceback.format_exc()
            results[name] = {"ok": False, "message": message, "measured": {}}
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--family", required=True, choices=sorted(STRUCTURES))
    parser.add_argument("--out", required=True, help="the JSON file to write (packages may print to stdout)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    potential = load_model(ModelRegistry(args.model_dir), args.model, "cpu")
    results = run_all(potential, args.family)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
