"""The torch HDNNP backend against n2p2's own ``nnp-predict`` outputs, and by derivatives and invariances beyond them.

No pip-installable n2p2 exists, so the reference is what n2p2's ``nnp-predict`` printed for the two potentials in
``../shared/fixtures/n2p2`` (PROVENANCE.md there): Cu2S in eV/Å (narrow and wide angular functions, polynomial
cutoff, sigma scaling, softplus networks) and water in Hartree/Bohr (narrow functions, tanh cutoff, min-max scaling
with centring, tanh networks), energies and every force to 1e-8 relative. Structures n2p2 never saw (rattled,
strained, triclinic, molecules) are checked by central finite differences of the energy (forces and stress, in eV
and Å, so the unit conversions are checked too) and by rotation and translation; the shared conformance test runs
its checks on the Cu2S model as well.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ase import Atoms, units  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.data import atomic_numbers  # noqa: E402
from mlipserve.models.backends.hdnnp import HDNNPPotential  # noqa: E402
from mlipserve.models.backends.hdnnp_format import HDNNPFormatError, read_settings, read_structures  # noqa: E402
from mlipserve.models.backends.hdnnp_functions import cutoff_function  # noqa: E402
from mlipserve.models.cards import CardError, file_sha256  # noqa: E402
from mlipserve.models.loading import load_model  # noqa: E402
from mlipserve.models.potential import ENERGY  # noqa: E402
from mlipserve.models.registry import ModelRegistry  # noqa: E402
from mlipserve.models.system import AtomicSystem  # noqa: E402
from mlipserve.server.dynamics.options import RelaxOptions, RelaxSpec  # noqa: E402
from mlipserve.server.dynamics.relaxation import RelaxationSet  # noqa: E402

from tests.conftest import FIXTURES, torch_threads, write_card  # noqa: E402
from tests.toy_potential import saved_for_backward  # noqa: E402

N2P2 = FIXTURES / "n2p2"
#: Each fixture's units as (name, Å per length unit, eV per energy unit), from its PROVENANCE.
UNITS = {"Cu2S_PBE": ("Angstrom", "eV", 1.0, 1.0), "H2O_RPBE-D3": ("Bohr", "Hartree", units.Bohr, units.Hartree)}
RELATIVE = 1e-8  # the bar against n2p2


@pytest.fixture(scope="module", autouse=True)
def _threads():
    with torch_threads(1):
        yield


def install_n2p2(model_dir: Path, fixture: str, name: str, edit: tuple[str, str] | None = None, **options) -> str:
    """Copy an n2p2 fixture into ``model_dir`` (``input.nn`` edited by ``edit``, if given) and write its card."""
    source = N2P2 / fixture
    folder = model_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.name == "input.nn" or path.name.startswith(("scaling", "weights")):
            shutil.copy(path, folder / path.name)
    if edit is not None:
        text = (folder / "input.nn").read_text()
        assert edit[0] in text, edit[0]
        (folder / "input.nn").write_text(text.replace(edit[0], edit[1]))
    settings = read_settings(source / "input.nn")  # the unedited file: an edit may make it unreadable
    length_unit, energy_unit, angstrom, _ = UNITS[fixture]
    weights = {e: f"weights.{atomic_numbers[e]:03d}.data" for e in settings.elements}
    card_options = {
        "scaling": f"{name}/scaling.data",
        "scaling_sha256": file_sha256(folder / "scaling.data"),
        "weights": {e: f"{name}/{file}" for e, file in weights.items()},
        "weights_sha256": {e: file_sha256(folder / file) for e, file in weights.items()},
        "length_unit": length_unit,
        "energy_unit": energy_unit,
    } | options
    write_card(
        model_dir,
        name,
        folder / "input.nn",
        family="hdnnp",
        checkpoint=f"{name}/input.nn",
        license="GPL-3.0-or-later",
        elements=" ".join(settings.elements),
        cutoff=settings.cutoff * angstrom,
        options=_flow(card_options),
    )
    (model_dir / "input.nn").unlink(missing_ok=True)  # write_card copies the checkpoint to the top as well
    return name


def _flow(value) -> str:
    """``value`` as YAML flow text (write_card writes one ``key: value`` line per field)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_flow(item)}" for key, item in value.items()) + "}"
    return str(value)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hdnnp")
    for fixture in UNITS:
        install_n2p2(folder, fixture, fixture.lower())
    return folder


@pytest.fixture(scope="module")
def potentials(model_dir: Path) -> dict[str, HDNNPPotential]:
    registry = ModelRegistry(model_dir)
    return {fixture: load_model(registry, fixture.lower(), "cpu") for fixture in UNITS}


def fixture_system(fixture: str) -> AtomicSystem:
    """The structure of the fixture's ``input.data``, converted to Å."""
    (frame,) = read_structures(N2P2 / fixture / "input.data")
    angstrom = UNITS[fixture][2]
    numbers = [atomic_numbers[s] for s in frame["symbols"]]
    return AtomicSystem.from_arrays(numbers, frame["positions"] * angstrom, frame["lattice"] * angstrom, True)


def reference(fixture: str) -> tuple[float, np.ndarray]:
    """n2p2's energy and forces (its own units) from the saved ``nnp-predict`` outputs."""
    folder = N2P2 / fixture
    rows = [line.split() for line in (folder / "reference_nnp-predict_energy.out").read_text().splitlines()]
    (energy,) = [float(row[3]) for row in rows if row and not row[0].startswith("#")]
    forces = np.loadtxt(folder / "reference_nnp-predict_nnforces.out")[:, 5:8]
    return energy, forces


@pytest.mark.parametrize("fixture", list(UNITS))
def test_energy_and_every_force_match_nnp_predict(potentials, fixture: str) -> None:
    _, _, angstrom, ev = UNITS[fixture]
    (prediction,) = potentials[fixture].predict([fixture_system(fixture)])
    energy, forces = reference(fixture)
    ours_energy, ours_forces = prediction.energy / ev, prediction.forces / ev * angstrom  # back to the file's units
    energy_error = abs(ours_energy - energy) / abs(energy)
    force_error = float(np.abs(ours_forces - forces).max()) / float(np.abs(forces).max())
    print(f"{fixture}: energy relative error {energy_error:.1e}, largest force error / largest force {force_error:.1e}")
    assert energy_error < RELATIVE
    assert force_error < RELATIVE
    np.testing.assert_allclose(ours_forces, forces, rtol=RELATIVE, atol=RELATIVE * float(np.abs(forces).max()))


def rattled_water(seed: int) -> Atoms:
    """Eight water molecules in a sheared cell of about liquid density, rattled."""
    rng = np.random.default_rng(seed)
    molecule = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    atoms = Atoms(cell=np.eye(3) * 6.2, pbc=True)
    for corner in np.ndindex(2, 2, 2):
        rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        atoms += Atoms("OH2", positions=molecule @ rotation.T + 3.1 * np.array(corner) + 0.8)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.04 * rng.standard_normal((3, 3))), scale_atoms=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def rattled_cu2s(seed: int) -> Atoms:
    """A strained triclinic antifluorite Cu2S cell of 12 atoms, rattled."""
    rng = np.random.default_rng(seed)
    atoms = bulk("SCu2", "fluorite", a=5.6, cubic=True)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.05 * rng.standard_normal((3, 3))), scale_atoms=True)
    atoms.rattle(0.1, seed=seed)
    return atoms


UNSEEN = {"Cu2S_PBE": rattled_cu2s, "H2O_RPBE-D3": rattled_water}


def energies(potential, structures) -> np.ndarray:
    return np.array([p.energy for p in potential.predict([AtomicSystem.from_ase(a) for a in structures], (ENERGY,))])


@pytest.mark.parametrize("fixture", list(UNITS))
def test_forces_and_stress_are_derivatives_of_the_energy_in_ev_and_angstrom(potentials, fixture: str) -> None:
    """Central differences on unseen structures: -dE/dx for the largest force components, (1/V) dE/de for all six
    strains; in eV and Å, so a missing unit conversion of energy or length fails."""
    potential = potentials[fixture]
    atoms = UNSEEN[fixture](seed=3)
    (prediction,) = potential.predict([AtomicSystem.from_ase(atoms)])
    step, strain = 1e-5, 1e-5
    picks = np.argsort(-np.abs(prediction.forces).ravel())[:4]
    displaced = []
    for flat in picks:
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[flat // 3, flat % 3] += sign * step
            displaced.append(moved)
    strains = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    for i, j in strains:
        for sign in (1, -1):
            epsilon = np.zeros((3, 3))
            epsilon[i, j] = epsilon[j, i] = sign * strain / (1 if i == j else 2)
            deformed = atoms.copy()
            deformed.set_cell(atoms.cell.array @ (np.eye(3) + epsilon), scale_atoms=True)
            displaced.append(deformed)
    e = energies(potential, displaced).reshape(-1, 2)
    fd_forces = -(e[: len(picks), 0] - e[: len(picks), 1]) / (2 * step)
    fd_stress = (e[len(picks) :, 0] - e[len(picks) :, 1]) / (2 * strain) / atoms.get_volume()
    analytic_forces = prediction.forces.ravel()[picks]
    analytic_stress = np.array([prediction.stress[i, j] for i, j in strains])
    print(f"{fixture}: forces {analytic_forces} vs {fd_forces}; stress {analytic_stress} vs {fd_stress}")
    assert np.abs(analytic_forces).min() > 0.1  # large enough that a wrong factor shows
    np.testing.assert_allclose(fd_forces, analytic_forces, rtol=1e-6, atol=1e-7)
    assert np.abs(analytic_stress).max() > 1e-3
    np.testing.assert_allclose(fd_stress, analytic_stress, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("fixture", list(UNITS))
def test_rotation_translation_and_batching_change_nothing(potentials, fixture: str) -> None:
    potential = potentials[fixture]
    atoms = UNSEEN[fixture](seed=5)
    rotation, _ = np.linalg.qr(np.random.default_rng(5).standard_normal((3, 3)))
    rotation *= np.sign(np.linalg.det(rotation))
    turned = atoms.copy()
    turned.positions = atoms.positions @ rotation.T + np.array([3.3, -7.1, 2.0])  # unwrapped, out of the cell
    turned.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    molecule = atoms[:3].copy()
    molecule.pbc, molecule.cell = False, np.zeros((3, 3))
    systems = [AtomicSystem.from_ase(a) for a in (atoms, turned, molecule)]
    batch = potential.predict(systems)
    alone = [potential.predict([system])[0] for system in systems]
    for together, single in zip(batch, alone, strict=True):
        assert together.energy == pytest.approx(single.energy, rel=1e-13, abs=1e-10)
        np.testing.assert_allclose(together.forces, single.forces, atol=1e-10)
    a, b = batch[0], batch[1]
    assert b.energy == pytest.approx(a.energy, rel=1e-12)
    np.testing.assert_allclose(b.forces, a.forces @ rotation.T, atol=1e-9)
    np.testing.assert_allclose(b.stress, rotation @ a.stress @ rotation.T, atol=1e-10)
    np.testing.assert_allclose(a.forces.sum(axis=0), 0.0, atol=1e-9)
    assert batch[2].stress is None and batch[2].forces.shape == (3, 3)


def test_chunked_angular_terms_recomputed_in_backward_give_the_same_numbers(potentials) -> None:
    """Many neighbour pairs are evaluated in chunks, recomputed in the backward pass: the same numbers."""
    potential = potentials["Cu2S_PBE"]
    systems = [AtomicSystem.from_ase(rattled_cu2s(seed)) for seed in (1, 2)]
    whole = potential.predict(systems)
    chunked = HDNNPPotential(potential.card, potential.model)
    chunked.triplet_chunk_elements = 60_000  # some 3000 pairs per chunk: chunks end inside an atom's pairs
    for a, b in zip(whole, chunked.predict(systems), strict=True):
        assert b.energy == pytest.approx(a.energy, rel=1e-13)
        np.testing.assert_allclose(b.forces, a.forces, atol=1e-11)
        np.testing.assert_allclose(b.stress, a.stress, atol=1e-12)


def test_energy_only_builds_no_autograd_graph(potentials) -> None:
    potential = potentials["Cu2S_PBE"]
    systems = [AtomicSystem.from_ase(rattled_cu2s(seed=7))]
    with saved_for_backward() as saved:
        (alone,) = potential.predict(systems, [ENERGY])
    assert saved == []
    assert alone.forces is None and alone.energy == pytest.approx(potential.predict(systems)[0].energy, rel=1e-14)


def test_order_of_symmetry_functions_and_elements_in_input_nn_does_not_matter(tmp_path: Path, potentials) -> None:
    """n2p2 sorts the symmetry functions and elements itself: a shuffled input.nn is the same potential."""
    text = (N2P2 / "Cu2S_PBE" / "input.nn").read_text()
    lines = text.splitlines()
    functions = [line for line in lines if line.startswith("symfunction_short")]
    rest = [line for line in lines if not line.startswith("symfunction_short")]
    shuffled = [functions[i] for i in np.random.default_rng(0).permutation(len(functions))]
    edited = "\n".join(rest + shuffled).replace("elements                        S Cu", "elements Cu S")
    install_n2p2(tmp_path, "Cu2S_PBE", "shuffled", edit=(text, edited))
    potential = load_model(ModelRegistry(tmp_path), "shuffled", "cpu")
    system = AtomicSystem.from_ase(rattled_cu2s(seed=4))
    (a,), (b,) = potential.predict([system]), potentials["Cu2S_PBE"].predict([system])
    assert a.energy == pytest.approx(b.energy, rel=1e-14)
    np.testing.assert_allclose(a.forces, b.forces, atol=1e-12)


@pytest.mark.parametrize("kind", range(9))
def test_every_cutoff_type_gives_a_smooth_consistent_potential(tmp_path: Path, kind: int) -> None:
    """Each of n2p2's cutoff types (inner cutoff alpha 0.3 where it applies): zero at and beyond rc, one at the
    origin (types 2-3 aside), and forces that are the derivative of the energy."""
    r = torch.linspace(0.0, 8.0, 801, dtype=torch.float64)
    f = cutoff_function(r, torch.tensor(6.0, dtype=torch.float64), kind, 0.3)
    assert torch.all(f[r >= 6.0] == 0.0) and torch.all(f[r < 6.0] > 0.0)
    if kind not in (2, 3):
        assert torch.all(f[r < 1.8] == 1.0)
    assert f[0] == pytest.approx({2: np.tanh(1.0) ** 3}.get(kind, 1.0))
    install_n2p2(tmp_path, "Cu2S_PBE", "cut", edit=("cutoff_type                     6 0.0", f"cutoff_type {kind} 0.3"))
    potential = load_model(ModelRegistry(tmp_path), "cut", "cpu")
    atoms = rattled_cu2s(seed=kind)
    (prediction,) = potential.predict([AtomicSystem.from_ase(atoms)])
    flat = int(np.abs(prediction.forces).argmax())
    moved = [atoms.copy(), atoms.copy()]
    moved[0].positions[flat // 3, flat % 3] += 1e-5
    moved[1].positions[flat // 3, flat % 3] -= 1e-5
    e_plus, e_minus = energies(potential, moved)
    assert -(e_plus - e_minus) / 2e-5 == pytest.approx(prediction.forces.ravel()[flat], rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("letters", ["s s l", "r g l", "c S l", "t e l", "h t l"])
def test_every_activation_gives_forces_that_are_the_energy_derivative(tmp_path: Path, letters: str) -> None:
    install_n2p2(
        tmp_path,
        "Cu2S_PBE",
        "act",
        edit=("global_activation_short         p p l", f"global_activation_short {letters}"),
    )
    potential = load_model(ModelRegistry(tmp_path), "act", "cpu")
    atoms = rattled_cu2s(seed=9)
    (prediction,) = potential.predict([AtomicSystem.from_ase(atoms)])
    flat = int(np.abs(prediction.forces).argmax())
    moved = [atoms.copy(), atoms.copy()]
    moved[0].positions[flat // 3, flat % 3] += 1e-5
    moved[1].positions[flat // 3, flat % 3] -= 1e-5
    e_plus, e_minus = energies(potential, moved)
    assert abs(prediction.forces.ravel()[flat]) > 1e-3
    assert -(e_plus - e_minus) / 2e-5 == pytest.approx(prediction.forces.ravel()[flat], rel=1e-5, abs=1e-7)


def test_relaxation_lowers_the_energy_to_a_converged_structure(potentials) -> None:
    """A rattled Cu2S cell relaxed with fixed cell by the engine's batched FIRE on this potential."""
    potential = potentials["Cu2S_PBE"]
    atoms = rattled_cu2s(seed=11)
    relaxations = RelaxationSet()
    relaxations.add("cu2s", AtomicSystem.from_ase(atoms), RelaxSpec(RelaxOptions(fmax=0.05, relax_cell=False)))
    start = potential.predict([AtomicSystem.from_ase(atoms)])[0].energy
    ended = []
    for _ in range(400):
        keys, systems = zip(*relaxations.systems(), strict=True)
        ended += relaxations.advance(dict(zip(keys, potential.predict(list(systems)), strict=True)))
        if ended:
            break
    (result,) = ended
    assert result.outcome.converged, result.outcome.stop_reason
    assert result.prediction.energy < start - 0.1
    assert np.abs(result.prediction.forces).max() < 0.05


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("cutoff_type                     6 0.0", "cutoff_type 9"), "cutoff_type 9"),
        (("symfunction_short S  2 S  2.000E+00 1.500E+00 6.000E+00", "symfunction_short S 13 S S 1 1 1 6 0 1"),
         r"type 13 \(weighted narrow angular\)"),
        (("symfunction_short S  2 S  2.000E+00 1.500E+00 6.000E+00", "symfunction_short S 21 S S 1 6 0 180 1 1"),
         r"type 21 \(polynomial narrow angular\)"),
        (("number_of_elements", "nnp_type 4G-HDNNP\nnumber_of_elements"), "4G-HDNNP"),
        (("number_of_elements", "element_nodes_short S 10 10\nnumber_of_elements"), "element_nodes_short"),
        (("number_of_elements", "global_symfunction_short 2 0.1 0 6\nnumber_of_elements"), "global_symfunction_short"),
        (("global_activation_short         p p l", "global_activation_short p x l"), "activation 'x'"),
        (("global_nodes_short              25 25", "global_nodes_short 25 24"), "connections"),
    ],
)  # fmt: skip
def test_unsupported_or_inconsistent_files_are_refused_by_name(tmp_path: Path, edit, message: str) -> None:
    install_n2p2(tmp_path, "Cu2S_PBE", "bad", edit=edit)
    with pytest.raises(CardError, match=message):
        load_model(ModelRegistry(tmp_path), "bad", "cpu")


def test_reader_refuses_a_symmetry_function_of_an_unknown_element(tmp_path: Path) -> None:
    text = (N2P2 / "Cu2S_PBE" / "input.nn").read_text() + "\nsymfunction_short S 2 O 1.0 0.0 6.0\n"
    (tmp_path / "input.nn").write_text(text)
    with pytest.raises(HDNNPFormatError, match="not in `elements`"):
        read_settings(tmp_path / "input.nn")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scaling_sha256": "0" * 64}, "sha256"),
        ({"weights_sha256": {"S": "0" * 64, "Cu": "0" * 64}}, "sha256"),
        ({"weights": {"S": "../elsewhere/weights.016.data", "Cu": "x"}}, "outside the model directory"),
        ({"length_unit": "furlong"}, "length_unit"),
        ({"modal": "x"}, "unknown HDNNP options"),
    ],
)
def test_card_options_are_checked(tmp_path: Path, options: dict, message: str) -> None:
    (tmp_path.parent / "elsewhere").mkdir(exist_ok=True)
    install_n2p2(tmp_path, "Cu2S_PBE", "card", **options)
    with pytest.raises(CardError, match=message):
        load_model(ModelRegistry(tmp_path), "card", "cpu")


def test_water_cutoff_is_twelve_bohr_in_angstrom(potentials) -> None:
    assert potentials["H2O_RPBE-D3"].cutoff == pytest.approx(12.0 * units.Bohr, rel=1e-15)
    assert potentials["Cu2S_PBE"].cutoff == 6.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(potentials) -> None:
    cpu = potentials["Cu2S_PBE"]
    gpu = HDNNPPotential(cpu.card, cpu.model, device="cuda")
    systems = [AtomicSystem.from_ase(rattled_cu2s(seed)) for seed in (1, 2)] + [fixture_system("Cu2S_PBE")]
    for a, b in zip(cpu.predict(systems), gpu.predict(systems), strict=True):
        assert b.energy == pytest.approx(a.energy, rel=1e-12)
        np.testing.assert_allclose(b.forces, a.forces, atol=1e-10)
        np.testing.assert_allclose(b.stress, a.stress, atol=1e-12)
