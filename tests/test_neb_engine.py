"""The batched NEB (server/dynamics/neb.py) against ASE's own ``NEB`` + ``FIRE`` with the same model.

The model is a real float64 MTP (the mlearn Mo test potential in ``shared/fixtures/mtp``) on vacancy hops in bcc Mo
supercells; the reference drives ASE with the same Potential wrapped in a small ASE calculator, and, for the MTP
family's reference implementation, with motep's own calculator.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator
from ase.constraints import FixAtoms
from ase.mep import NEB
from ase.optimize import FIRE
from mlipserve.models.backends.mtp import MTPPotential, load_potential
from mlipserve.models.backends.mtp_format import read_mtp
from mlipserve.models.calculator import PotentialCalculator
from mlipserve.models.cards import ModelCard
from mlipserve.models.neighbors import SkinNeighborList
from mlipserve.models.prediction import Prediction
from mlipserve.models.system import AtomicSystem
from mlipserve.models.tensor_batch import NeighborSource
from mlipserve.server.dynamics.groups import Ended
from mlipserve.server.dynamics.neb import NEBSet, path_problem
from mlipserve.server.dynamics.options import NEBOptions, NEBSpec

from .conftest import FIXTURES, torch_threads

MO = FIXTURES / "mtp" / "mlearn_Mo_test" / "fitted.mtp"
A_MO = 3.16  # Å, bcc lattice constant
BARRIER_TOL = 1e-3  # eV
POSITION_TOL = 1e-4  # Å


@pytest.fixture(scope="module", autouse=True)
def _threads() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def mo() -> MTPPotential:
    card = ModelCard.from_dict(
        {
            "name": "mo-test",
            "family": "mtp",
            "version": "test",
            "checkpoint": MO.name,
            "sha256": "0" * 64,
            "license": "MIT",
            "elements": ("Mo",),
            "cutoff": read_mtp(MO).max_dist,
        },
        root=MO.parent,
    )
    return load_potential(card, MO, torch.device("cpu"))


def vacancy_hop(
    model: MTPPotential, repeat: tuple[int, int, int], fixed: Sequence[int] | None = None
) -> tuple[Atoms, Atoms]:
    """A vacancy at the origin of a cubic bcc Mo supercell and the nearest neighbour hopped into it; both end
    points relaxed with ASE's FIRE (same atom order; ``fixed`` atoms held at their lattice sites)."""
    initial = bulk("Mo", "bcc", a=A_MO, cubic=True).repeat(repeat)
    del initial[0]
    final = initial.copy()
    hopping = int(np.argmin(np.linalg.norm(initial.positions - A_MO / 2, axis=1)))
    final.positions[hopping] = 0.0
    for atoms in (initial, final):
        atoms.calc = PotentialCalculator(model)
        if fixed is not None:
            atoms.set_constraint(FixAtoms(indices=fixed))
        FIRE(atoms, logfile=None).run(fmax=0.01, steps=200)
        atoms.calc = None
        atoms.set_constraint()
    return initial, final


@pytest.fixture(scope="module")
def small(mo) -> tuple[Atoms, Atoms]:
    return vacancy_hop(mo, (2, 2, 2))  # 15 atoms


@pytest.fixture(scope="module")
def large(mo) -> tuple[Atoms, Atoms]:
    return vacancy_hop(mo, (3, 2, 2))  # 23 atoms


def ase_neb(
    initial: Atoms,
    final: Atoms,
    options: NEBOptions,
    calculator: Callable[[], Calculator],
    intermediates: Sequence[Atoms] = (),
    fixed: Sequence[int] | None = None,
) -> tuple[list[Atoms], list[float], int, bool]:
    """ASE's own NEB + FIRE: the images, their energies, the steps and whether it converged."""
    middle = [image.copy() for image in intermediates] or [initial.copy() for _ in range(options.images)]
    images = [initial.copy(), *middle, final.copy()]
    for image in images:
        if fixed is not None:
            image.set_constraint(FixAtoms(indices=fixed))
        image.calc = calculator()
    neb = NEB(images, k=options.spring_constant, climb=options.climb, method=options.method)
    if not intermediates:
        neb.interpolate(method=options.interpolation, mic=True)
    optimizer = FIRE(neb, logfile=None)
    converged = optimizer.run(fmax=options.fmax, steps=options.max_steps)
    return images, [image.get_potential_energy() for image in images], optimizer.nsteps, bool(converged)


Join = tuple[str, Atoms, NEBSpec, int]


def run_set(
    model: MTPPotential, paths: Sequence[Join], tensors: bool = True, neighbors: NeighborSource | None = None
) -> dict[str, Ended]:
    """Run paths in one NEBSet until all end; each joins in its round (the 4th field)."""
    neb_set, ended, rounds = NEBSet(neighbors=neighbors), {}, 0
    last_join = max(when for *_, when in paths)
    while rounds <= last_join or len(neb_set):
        for key, initial, spec, when in paths:
            if when == rounds:
                neb_set.add(key, AtomicSystem.from_ase(initial), spec)
        if tensors:
            batch = neb_set.batch()
            held = set(neb_set.keys())
            assert batch.keys and all(neb_set.owner(key) in held for key in batch.keys)
            out = neb_set.advance_tensors(model.predict_tensors(batch, neb_set.properties()))
        else:
            systems = neb_set.systems()
            predictions = model.predict([system for _, system in systems], neb_set.properties())
            out = neb_set.advance({key: p for (key, _), p in zip(systems, predictions, strict=True)})
        ended |= {result.key: result for result in out}
        rounds += 1
        assert rounds < 2000
    return ended


def spec_of(final: Atoms, options: NEBOptions, **fields) -> NEBSpec:
    return NEBSpec(options, AtomicSystem.from_ase(final), **fields)


def assert_same_path(ended: Ended, images: list[Atoms], energies: list[float], steps: int, converged: bool) -> None:
    outcome = ended.outcome
    assert outcome.converged == converged and outcome.steps == steps
    assert outcome.stop_reason == ("converged" if converged else "max_steps")
    barrier = max(energies) - energies[0]
    assert abs(outcome.barrier_forward - barrier) < BARRIER_TOL
    np.testing.assert_allclose(outcome.energies, energies, rtol=0, atol=BARRIER_TOL)
    saddle = outcome.saddle_index
    assert saddle == int(np.argmax(energies))
    np.testing.assert_allclose(outcome.images[saddle].positions, images[saddle].positions, rtol=0, atol=POSITION_TOL)
    assert ended.prediction.energy == outcome.energies[saddle]
    assert len(outcome.images) == len(outcome.energies) == len(outcome.image_fmax) == len(images)
    moving = outcome.image_fmax[1:-1]
    assert outcome.fmax == max(moving) and (not converged or outcome.fmax < 0.05)


@pytest.mark.parametrize(
    "interpolation, method, skin",
    [("idpp", "improvedtangent", True), ("linear", "aseneb", False)],
    ids=["idpp-skin-list", "linear"],
)
def test_two_paths_joining_in_flight_match_ase(mo, small, large, interpolation, method, skin) -> None:
    """Two paths of different sizes in one set, the second joining a round later, each as ASE finds it alone (with
    the engine's reused neighbour list following the images by their keys, or a fresh list each round)."""
    options = [
        NEBOptions(images=5, interpolation=interpolation, method=method, climb=True, fmax=0.05, max_steps=300),
        NEBOptions(images=5, interpolation=interpolation, method=method, climb=True, fmax=0.05, max_steps=300),
    ]
    paths = [("small", *small, options[0]), ("large", *large, options[1])]
    joins = [(key, a, spec_of(b, o), when) for when, (key, a, b, o) in enumerate(paths)]
    ended = run_set(mo, joins, neighbors=SkinNeighborList() if skin else None)
    assert sorted(ended) == ["large", "small"]
    for key, initial, final, option in paths:
        reference = ase_neb(initial, final, option, lambda: PotentialCalculator(mo))
        assert reference[3], "the reference should converge"
        assert_same_path(ended[key], *reference)
        assert 0.5 < ended[key].outcome.barrier_forward < 5  # a vacancy hop, not a flat path


def test_host_interface_matches_the_tensor_interface(mo, small) -> None:
    options = NEBOptions(images=3, max_steps=40)
    spec = spec_of(small[1], options)
    by_tensors = run_set(mo, [("path", small[0], spec, 0)])["path"].outcome
    on_host = run_set(mo, [("path", small[0], spec, 0)], tensors=False)["path"].outcome
    assert by_tensors.steps == on_host.steps
    np.testing.assert_allclose(by_tensors.energies, on_host.energies, rtol=0, atol=1e-9)


def bent_path(initial: Atoms, final: Atoms, count: int) -> list[Atoms]:
    """``count`` images on straight lines, with the moving atom pushed sideways (a bump), unlike any interpolation."""
    moving = int(np.argmax(np.linalg.norm(final.positions - initial.positions, axis=1)))
    images = []
    for i in range(1, count + 1):
        t = i / (count + 1)
        image = initial.copy()
        image.positions = (1 - t) * initial.positions + t * final.positions
        image.positions[moving] += 0.3 * np.sin(np.pi * t) * np.array([1.0, -1.0, 0.0]) / np.sqrt(2)
        images.append(image)
    return images


def test_given_intermediates_are_the_starting_path(mo, small) -> None:
    initial, final = small
    given = bent_path(initial, final, 3)
    intermediates = tuple(AtomicSystem.from_ase(image) for image in given)
    unmoved_spec = spec_of(final, NEBOptions(images=7, max_steps=0), intermediates=intermediates)
    unmoved = run_set(mo, [("p", initial, unmoved_spec, 0)])
    outcome = unmoved["p"].outcome
    assert outcome.steps == 0 and outcome.stop_reason == "max_steps" and len(outcome.images) == 5
    for image, system in zip(given, outcome.images[1:-1], strict=True):
        assert np.array_equal(image.positions, system.positions)

    options = NEBOptions(images=7, climb=True, max_steps=300)
    ended = run_set(mo, [("p", initial, spec_of(final, options, intermediates=intermediates), 0)])
    reference = ase_neb(initial, final, options, lambda: PotentialCalculator(mo), intermediates=given)
    assert_same_path(ended["p"], *reference)


def test_fixed_atoms_stay_put(mo, large) -> None:
    distance = np.linalg.norm(large[0].positions - A_MO / 4, axis=1)  # from the middle of the hop
    fixed = np.sort(np.argsort(distance)[-6:])  # the six farthest atoms
    initial, final = vacancy_hop(mo, (3, 2, 2), fixed=fixed.tolist())
    options = NEBOptions(images=4, climb=True, max_steps=300)
    ended = run_set(mo, [("p", initial, spec_of(final, options, fixed=fixed), 0)])
    outcome = ended["p"].outcome
    for system in outcome.images:
        assert np.array_equal(system.positions[fixed], initial.positions[fixed])
    reference = ase_neb(initial, final, options, lambda: PotentialCalculator(mo), fixed=fixed.tolist())
    assert_same_path(ended["p"], *reference)


def test_a_failed_image_drops_its_path_only(mo, small, large) -> None:
    neb_set = NEBSet()
    options = NEBOptions(images=3, max_steps=50)
    neb_set.add("a", AtomicSystem.from_ase(small[0]), spec_of(small[1], options))
    neb_set.add("b", AtomicSystem.from_ase(large[0]), spec_of(large[1], options))
    assert neb_set.n_atoms == 15 * 5 + 23 * 5  # 3 moving images and, in the first round, both end points
    ended: list[Ended] = []
    for rounds in range(200):
        systems = neb_set.systems()
        if not systems:
            break
        predictions: dict[str, Prediction | None] = dict(
            zip([key for key, _ in systems], mo.predict([s for _, s in systems], ("energy", "forces")), strict=True)
        )
        if rounds == 2:
            predictions["a#2"] = None
        ended += neb_set.advance(predictions)
        if rounds == 0:
            assert neb_set.n_atoms == 15 * 3 + 23 * 3
        if rounds == 2:
            assert neb_set.keys() == ["b"] and neb_set.n_atoms == 23 * 3
    assert [result.key for result in ended] == ["b"]


def test_non_finite_energies_end_a_path_as_exploded(mo, small) -> None:
    neb_set = NEBSet()
    neb_set.add("p", AtomicSystem.from_ase(small[0]), spec_of(small[1], NEBOptions(images=3)))
    for rounds in range(3):
        systems = neb_set.systems()
        predictions = mo.predict([s for _, s in systems], ("energy", "forces"))
        if rounds == 2:
            predictions[1] = Prediction(float("nan"), predictions[1].forces)
        ended = neb_set.advance({key: p for (key, _), p in zip(systems, predictions, strict=True)})
    assert [result.outcome.stop_reason for result in ended] == ["exploded"]
    assert not len(neb_set)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="motep needs Python >= 3.11")
def test_barrier_matches_motep_ase_calculator(mo, small) -> None:
    """The served MTP path's barrier against ASE's NEB driven by motep's own calculator (MTP's reference code)."""
    from motep.calculator import MTP as MotepCalculator
    from motep.io.mlip.mtp import read_mtp as motep_read_mtp

    def motep() -> Calculator:
        data = motep_read_mtp(MO)
        data.species = [42]
        return MotepCalculator(data, engine="cext")

    initial, final = small
    # an odd number of images: the hop is symmetric, so the middle image climbs; with an even number the two middle
    # images tie, and rounding (motep's sums against ours, 1e-13 eV) picks which one climbs and mirrors the path
    options = NEBOptions(images=5, climb=True, max_steps=300)
    ended = run_set(mo, [("p", initial, spec_of(final, options), 0)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # motep warns about neighbours closer than min_dist
        reference = ase_neb(initial, final, options, motep)
    assert_same_path(ended["p"], *reference)


def test_paths_ase_cannot_take_are_refused(small) -> None:
    initial, final = (AtomicSystem.from_ase(atoms) for atoms in small)
    options = NEBOptions()
    assert path_problem(initial, NEBSpec(options, final)) is None
    shorter = AtomicSystem.from_ase(small[1][1:])
    assert "same order" in path_problem(initial, NEBSpec(options, shorter))
    moved = np.flatnonzero(np.linalg.norm(final.positions - initial.positions, axis=1) > 1e-3)
    assert "fixed atoms" in path_problem(initial, NEBSpec(options, final, fixed=moved[:1]))
    with pytest.raises(ValueError, match="fixed atoms"):
        NEBSet().add("p", initial, NEBSpec(options, final, fixed=moved[:1]))
