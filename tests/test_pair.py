"""The `pair` family (Lennard-Jones, Morse) against ASE's own LennardJones and MorsePotential calculators.

Structures are built here (rattled, strained, triclinic crystals, a cluster, multi-element cells), evaluated as one
batch. Several elements: a pair potential's energy, forces and stress are sums over element pairs, so the reference
for a mixed structure is assembled from ASE runs on its element subsets, each with that pair's parameters
(E_AB = E(A ∪ B) − E(A) − E(B)); the mixing rules are checked by writing the mixed numbers out by hand.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator
from ase.calculators.lj import LennardJones
from ase.calculators.morse import MorsePotential
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from mlipserve.models.cards import CardError
from mlipserve.models.loading import load_model
from mlipserve.models.potential import Potential
from mlipserve.models.registry import ModelRegistry
from mlipserve.models.system import AtomicSystem
from mlipserve.server.dynamics.options import RelaxOptions, RelaxSpec
from mlipserve.server.engine.batching import BatchPolicy
from mlipserve.server.engine.loop import Worker
from mlipserve.server.engine.tasks import Task

from .conftest import write_card
from .test_graph_and_worker import ListSource

ARGON = {"potential": "lennard-jones", "epsilon": 0.0104, "sigma": 3.40}
#: Lennard-Jones and Morse settings, each beside the ASE calculator with the same parameters.
SINGLE = {
    "lj-shifted": (ARGON, lambda: LennardJones(epsilon=0.0104, sigma=3.40)),
    "lj-rc": (ARGON | {"rc": 7.0}, lambda: LennardJones(epsilon=0.0104, sigma=3.40, rc=7.0)),
    "lj-smooth": (ARGON | {"smooth": True}, lambda: LennardJones(epsilon=0.0104, sigma=3.40, smooth=True)),
    "lj-smooth-ro": (
        ARGON | {"rc": 8.0, "ro": 6.5, "smooth": True},
        lambda: LennardJones(epsilon=0.0104, sigma=3.40, rc=8.0, ro=6.5, smooth=True),
    ),
    "morse": (
        {"potential": "morse", "epsilon": 0.12, "r0": 3.8, "rho0": 4.5},
        lambda: MorsePotential(epsilon=0.12, r0=3.8, rho0=4.5),
    ),
    "morse-rcut": (
        {"potential": "morse", "epsilon": 0.12, "r0": 3.8, "rho0": 4.5, "rcut1": 1.4, "rcut2": 2.1},
        lambda: MorsePotential(epsilon=0.12, r0=3.8, rho0=4.5, rcut1=1.4, rcut2=2.1),
    ),
}


def strained(atoms: Atoms, seed: int, rattle: float = 0.15, strain: float = 0.04) -> Atoms:
    """``atoms`` with a random (triclinic) strain of its cell and rattled positions."""
    rng = np.random.default_rng(seed)
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.uniform(-strain, strain, (3, 3))), scale_atoms=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


def structures(symbols: tuple[str, ...] = ("Ar",)) -> list[Atoms]:
    """A strained fcc supercell, a small triclinic primitive cell, a compressed cell and a cluster; with several
    ``symbols``, the atoms take them in turn."""
    compressed = bulk("Ar", "fcc", a=4.9, cubic=True)
    cluster = bulk("Ar", "fcc", a=5.3, cubic=True) * (2, 1, 1)
    cluster.pbc, cluster.cell = False, np.zeros((3, 3))
    sample = [
        strained(bulk("Ar", "fcc", a=5.26, cubic=True) * (2, 1, 1), 1),
        strained(bulk("Ar", "fcc", a=5.26), 2, rattle=0.1, strain=0.08),  # 1 atom: only its own images
        strained(compressed, 3),
        strained(cluster, 4, rattle=0.2),
    ]
    for atoms in sample:
        atoms.symbols = [symbols[index % len(symbols)] for index in range(len(atoms))]
    return sample


def ase_results(atoms: Atoms, calculator: Calculator) -> tuple[float, np.ndarray, np.ndarray | None]:
    atoms = atoms.copy()
    atoms.calc = calculator
    stress = atoms.get_stress(voigt=False) if atoms.pbc.any() else None
    return atoms.get_potential_energy(), atoms.get_forces(), stress


def pair_sum_reference(
    atoms: Atoms, calculators: dict[frozenset[str], Callable[[], Calculator]]
) -> tuple[float, np.ndarray, np.ndarray | None]:
    """ASE's answer for a mixed structure: the sum over element pairs of that pair's calculator's share."""
    energy, forces = 0.0, np.zeros((len(atoms), 3))
    stress = np.zeros((3, 3)) if atoms.pbc.any() else None

    def add(indices: np.ndarray, calculator: Callable[[], Calculator], sign: float) -> None:
        nonlocal energy
        if indices.size == 0:
            return
        e, f, s = ase_results(atoms[indices], calculator())
        energy += sign * e
        forces[indices] += sign * f
        if stress is not None:
            stress[...] += sign * s

    symbols = np.array(atoms.get_chemical_symbols())
    for pair, calculator in calculators.items():
        first, second = sorted(pair) * (2 if len(pair) == 1 else 1)
        add(np.flatnonzero(np.isin(symbols, [first, second])), calculator, 1.0)
        if first != second:
            add(np.flatnonzero(symbols == first), calculator, -1.0)
            add(np.flatnonzero(symbols == second), calculator, -1.0)
    return energy, forces, stress


def install(model_dir: Path, name: str, parameters: dict, elements: str = "Ar", **card: object) -> Potential:
    """Write ``parameters`` as the checkpoint of a card ``name`` and load it as the server does."""
    from mlipserve.models.backends.pair_format import parse_parameters

    path = model_dir / f"{name}.pair"
    path.write_text(yaml.safe_dump(parameters))
    cutoff = parse_parameters(parameters, tuple(elements.split())).cutoff
    fields: dict[str, object] = {"family": "pair", "elements": elements, "cutoff": cutoff} | card
    write_card(model_dir, name, path, **fields)
    return load_model(ModelRegistry(model_dir), name, "cpu")


def assert_matches(potential: Potential, sample: list[Atoms], references: list, tolerance: float = 1e-10) -> None:
    predictions = potential.predict([AtomicSystem.from_ase(atoms) for atoms in sample])
    for prediction, (energy, forces, stress) in zip(predictions, references, strict=True):
        assert prediction.energy == pytest.approx(energy, rel=tolerance, abs=tolerance)
        np.testing.assert_allclose(prediction.forces, forces, rtol=0, atol=tolerance)
        if stress is None:
            assert prediction.stress is None
        else:
            np.testing.assert_allclose(prediction.stress, stress, rtol=0, atol=tolerance)
    assert any(np.abs(reference[1]).max() > 1e-2 for reference in references)  # forces large enough to test


@pytest.mark.parametrize("case", sorted(SINGLE))
def test_one_element_equals_ases_calculator(case: str, tmp_path: Path) -> None:
    parameters, calculator = SINGLE[case]
    potential = install(tmp_path, case, parameters)
    sample = structures()
    assert_matches(potential, sample, [ase_results(atoms, calculator()) for atoms in sample])


def test_energy_only_and_float32(tmp_path: Path) -> None:
    """An energy-only request answers the same energy without forces; float32 agrees to its precision."""
    sample = [AtomicSystem.from_ase(atoms) for atoms in structures()]
    full = install(tmp_path, "lj64", ARGON).predict(sample)
    energies = install(tmp_path, "lj64", ARGON).predict(sample, ("energy",))
    assert all(entry.forces is None and entry.stress is None for entry in energies)
    assert [entry.energy for entry in energies] == pytest.approx([p.energy for p in full], rel=1e-14)
    single = install(tmp_path, "lj32", ARGON, options="{dtype: float32}")
    assert str(single.dtype) == "torch.float32"
    assert [p.energy for p in single.predict(sample)] == pytest.approx([p.energy for p in full], rel=1e-5)


LJ_ELEMENTS = {"Ar": {"epsilon": 0.0104, "sigma": 3.40}, "Kr": {"epsilon": 0.0140, "sigma": 3.65}}


def lj(epsilon: float, sigma: float, **extra: float) -> Callable[[], Calculator]:
    return lambda: LennardJones(epsilon=epsilon, sigma=sigma, **extra)


def test_several_elements_mix_by_lorentz_berthelot(tmp_path: Path) -> None:
    """Ar-Kr takes (σ_Ar + σ_Kr) / 2 and √(ε_Ar ε_Kr); Xe-Ar its own ``pairs`` entry; rc follows each σ."""
    parameters = {
        "potential": "lennard-jones",
        "elements": LJ_ELEMENTS | {"Xe": {"epsilon": 0.0190, "sigma": 3.95}},
        "pairs": {"Xe-Ar": {"epsilon": 0.0150, "sigma": 3.70, "rc": 9.0}},
    }
    potential = install(tmp_path, "lj-mix", parameters, elements="Ar Kr Xe")
    calculators = {
        frozenset({"Ar"}): lj(0.0104, 3.40),
        frozenset({"Kr"}): lj(0.0140, 3.65),
        frozenset({"Xe"}): lj(0.0190, 3.95),
        frozenset({"Ar", "Kr"}): lj(math.sqrt(0.0104 * 0.0140), (3.40 + 3.65) / 2),
        frozenset({"Kr", "Xe"}): lj(math.sqrt(0.0140 * 0.0190), (3.65 + 3.95) / 2),
        frozenset({"Ar", "Xe"}): lj(0.0150, 3.70, rc=9.0),
    }
    assert potential.cutoff == pytest.approx(3 * 3.95)
    sample = structures(("Ar", "Kr", "Xe"))
    assert_matches(potential, sample, [pair_sum_reference(atoms, calculators) for atoms in sample])


def test_smooth_lennard_jones_of_two_elements(tmp_path: Path) -> None:
    parameters = {"potential": "lennard-jones", "smooth": True, "rc": 8.0, "elements": LJ_ELEMENTS}
    potential = install(tmp_path, "lj-mix-smooth", parameters, elements="Ar Kr")
    calculators = {
        frozenset({"Ar"}): lj(0.0104, 3.40, rc=8.0, smooth=True),
        frozenset({"Kr"}): lj(0.0140, 3.65, rc=8.0, smooth=True),
        frozenset({"Ar", "Kr"}): lj(math.sqrt(0.0104 * 0.0140), (3.40 + 3.65) / 2, rc=8.0, smooth=True),
    }
    sample = structures(("Kr", "Ar"))
    assert_matches(potential, sample, [pair_sum_reference(atoms, calculators) for atoms in sample])


def test_morse_of_two_elements_with_a_pair_entry(tmp_path: Path) -> None:
    """Morse has no mixing rule: the unlike pair has its own entry, the like pairs their elements' values."""
    parameters = {
        "potential": "morse",
        "rcut2": 2.4,
        "elements": {
            "Cu": {"epsilon": 0.34, "r0": 2.87, "rho0": 3.9},
            "Ni": {"epsilon": 0.42, "r0": 2.78, "rho0": 4.1},
        },
        "pairs": {"Cu-Ni": {"epsilon": 0.38, "r0": 2.82, "rho0": 4.0, "rcut1": 1.6}},
    }
    potential = install(tmp_path, "morse-mix", parameters, elements="Cu Ni")
    calculators = {
        frozenset({"Cu"}): lambda: MorsePotential(epsilon=0.34, r0=2.87, rho0=3.9, rcut2=2.4),
        frozenset({"Ni"}): lambda: MorsePotential(epsilon=0.42, r0=2.78, rho0=4.1, rcut2=2.4),
        frozenset({"Cu", "Ni"}): lambda: MorsePotential(epsilon=0.38, r0=2.82, rho0=4.0, rcut1=1.6, rcut2=2.4),
    }
    sample = [strained(bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1), seed, rattle=0.1) for seed in (5, 6)]
    for atoms in sample:
        atoms.symbols = ["Cu", "Ni", "Ni", "Cu", "Cu", "Cu", "Ni", "Cu"]
    assert_matches(potential, sample, [pair_sum_reference(atoms, calculators) for atoms in sample])


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"potential": "buckingham", "A": 1.0}, "potential 'buckingham' is not served by the pair family"),
        (ARGON | {"cutoff": 3.0}, r"unknown keys \['cutoff'\]"),
        ({"potential": "lennard-jones", "epsilon": 0.01}, "pair Ar-Ar has no sigma"),
        ({"potential": "morse", "elements": {"Cu": {"epsilon": 1, "r0": 2, "rho0": 3},
                                             "Ni": {"epsilon": 1, "r0": 2, "rho0": 3}}},
         "pair Ni-Cu has no epsilon, r0, rho0"),
        ({"potential": "morse", "epsilon": 1, "r0": 2, "rho0": 3, "rcut1": 2.0, "rcut2": 1.5}, "rcut1 .* below rcut2"),
        (ARGON | {"sigma": "big"}, "sigma must be a finite number"),
        (ARGON | {"pairs": {"Ar-Kr-Xe": {"sigma": 1}}}, "'Ar-Kr-Xe' is not an element pair"),
    ],
)  # fmt: skip
def test_refuses_what_it_cannot_serve_by_name(tmp_path: Path, parameters: dict, message: str) -> None:
    from mlipserve.models.backends.pair_format import PairFormatError, parse_parameters

    with pytest.raises(PairFormatError, match=message):
        parse_parameters(parameters, ("Ar",))
    path = tmp_path / "bad.pair"
    path.write_text(yaml.safe_dump(parameters))
    write_card(tmp_path, "bad", path, family="pair", elements="Cu Ni", cutoff=1.0)
    with pytest.raises(CardError, match="bad: "):
        load_model(ModelRegistry(tmp_path), "bad", "cpu")


def test_card_is_checked_against_the_parameters(tmp_path: Path) -> None:
    """The card's cutoff must be the largest pair cutoff, its elements ones the file covers; the file is hashed."""
    with pytest.raises(CardError, match="cutoff"):
        install(tmp_path, "wrong-cutoff", ARGON, cutoff=5.0)
    with pytest.raises(CardError, match="only in the card: Xe"):
        install(tmp_path, "wrong-elements", {"potential": "lennard-jones", "elements": LJ_ELEMENTS}, elements="Ar Xe")
    install(tmp_path, "altered", ARGON)
    (tmp_path / "altered.pair").write_text(yaml.safe_dump(ARGON | {"epsilon": 1.0}))
    with pytest.raises(CardError, match="refusing to load it"):
        load_model(ModelRegistry(tmp_path), "altered", "cpu")


def ase_fire(atoms: Atoms, options: RelaxOptions) -> tuple[Atoms, int]:
    atoms = atoms.copy()
    atoms.calc = LennardJones(epsilon=0.0104, sigma=3.40, rc=8.0, smooth=True)
    optimizer = FIRE(FrechetCellFilter(atoms), logfile=None)
    optimizer.run(fmax=options.fmax, steps=options.max_steps)
    return atoms, optimizer.nsteps


def test_relaxation_through_the_engine_equals_ase_fire(tmp_path: Path) -> None:
    """A worker relaxes strained argon with the pair model step for step as ASE's FIRE + FrechetCellFilter."""
    potential = install(tmp_path, "lj-relax", ARGON | {"rc": 8.0, "smooth": True})
    options = RelaxOptions(fmax=0.005, max_steps=200)
    sample = [strained(bulk("Ar", "fcc", a=5.5, cubic=True), seed, rattle=0.1) for seed in (7, 8)]
    tasks = [
        Task(f"relax-{index}", "lj-relax", AtomicSystem.from_ase(atoms), (), RelaxSpec(options))
        for index, atoms in enumerate(sample)
    ]
    source = ListSource(tasks)
    worker = Worker(potential, source, BatchPolicy(max_atoms=1000, max_wait=0.0, idle_poll=0.01))
    for _ in itertools.count():
        worker.step()
        if len(source.delivered) == len(tasks):
            break
    results = {result.task_id: result for result in source.delivered}
    for task, atoms in zip(tasks, sample, strict=True):
        outcome = results[task.id].relaxation
        reference, steps = ase_fire(atoms, options)
        assert outcome is not None and outcome.converged and outcome.steps == steps > 10
        np.testing.assert_allclose(outcome.system.positions, reference.positions, atol=1e-8)
        np.testing.assert_allclose(outcome.system.cell, reference.cell.array, atol=1e-8)
        assert results[task.id].prediction.energy == pytest.approx(reference.get_potential_energy(), abs=1e-9)
