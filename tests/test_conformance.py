"""Conformance: every model family keeps the Potential contract, checked by the same code for all of them.

What passing guarantees, for a model of each family loaded as a server loads it (``load_model(ModelRegistry(model_dir),
name, "cpu")``) and evaluated through ``Potential.predict`` on small structures built here (rattled, strained,
triclinic periodic cells of 2-8 atoms, one described by a left-handed cell, and a molecule or cluster):

* outputs: the model's dtype is its family's; energy a finite Python float; forces a finite (n, 3) float64 array;
  stress a finite (3, 3) float64 array for a periodic system and None for a molecule; an energy-only request
  answers the same energy and nothing else;
* a batch of all the structures equals each structure evaluated alone;
* translation invariance (atoms moved out of the cell, unwrapped) of energy, forces and stress, with forces that
  sum to zero; rotation invariance of the energy and equivariance of forces (F Rᵀ) and stress (R σ Rᵀ);
* forces = −∂E/∂x and stress = (1/V) ∂E/∂ε (ASE's sign, tensile positive) by central finite differences of the
  energy alone, on forces and stresses large enough that a sign error, a missing factor or a wrong unit fails.

Tolerances follow the family's dtype (``tests/conformance_cases.py``, :data:`TOLERANCES`): float32 families
(SevenNet, CHGNet, NequIP, MACE) and float64 ones (MTP, ACE). The checks themselves live in
``tests/conformance_cases.py``, which needs no pytest, so that the families with environments of their own (MACE,
ORB, fairchem, ...) run the very same checks inside them (``.venv-FAMILY``), where this process cannot import their
packages; their results come back as JSON.

Adding a family: register it in ``mlipserve.models.registry.FAMILIES`` (``test_every_family_has_a_case`` fails
until the rest is done), give it structures of its elements in ``conformance_cases.STRUCTURES`` and its dtype and
stress support in ``conformance_cases.TRAITS``, and add a :class:`Case` to :data:`CASES` below that installs a
small model of the family into the model directory (card and checkpoint) and names it. A family that runs only in
its own environment gets ``environment`` set; :func:`environment_results` runs ``conformance_cases.py`` there.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlipserve.models.loading import load_model
from mlipserve.models.potential import Potential
from mlipserve.models.registry import FAMILIES, ModelRegistry

from . import conformance_cases as conformance
from .conftest import FIXTURES, torch_threads, write_card
from .family_envs import env_python, run_in_environment

HELPERS = Path(__file__).resolve().parent


def install_mtp(model_dir: Path) -> str:
    from mlipserve.models.backends.mtp_format import read_mtp

    path = FIXTURES / "mtp" / "asemtp_FeCoNiCrAl_5species" / "pot.mtp"
    elements = "Fe Co Ni Cr Al"  # MTP species 0..4, as the file's README maps them
    write_card(model_dir, "conformance-mtp", path, family="mtp", elements=elements, cutoff=read_mtp(path).max_dist)
    return "conformance-mtp"


def install_ace(model_dir: Path) -> str:
    from mlipserve.models.backends.ace_format import read_potential

    path = HELPERS / "data" / "ace" / "HfO_chebexpcos.yace"
    model = read_potential(path)
    elements = " ".join(model.elements)
    write_card(model_dir, "conformance-ace", path, family="ace", elements=elements, cutoff=model.cutoff)
    return "conformance-ace"


def install_pair(model_dir: Path) -> str:
    """A Morse model of Fe Co Ni Cr Al: like pairs per element, unlike pairs the top-level values."""
    from mlipserve.models.backends.pair_format import read_parameters

    path = HELPERS / "data" / "pair" / "morse-hea.pair"
    cutoff = read_parameters(path, ()).cutoff
    write_card(model_dir, "conformance-pair", path, family="pair", elements="Fe Co Ni Cr Al", cutoff=cutoff)
    return "conformance-pair"


def install_snap(model_dir: Path) -> str:
    """LAMMPS' InP SNAP (chemflag, bnormflag, wselfallflag) with the ZBL term its include file overlays."""
    from mlipserve.models.backends.snap import model_cutoff
    from mlipserve.models.backends.snap_format import read_model

    from .test_snap import snap_options

    stem = FIXTURES / "snap" / "InP_JCPA2020"
    path, parameters, include = (stem.with_name(f"{stem.name}.{kind}") for kind in ("snapcoeff", "snapparam", "snap"))
    model = read_model(path, parameters, include)
    cutoff = model_cutoff(model.parameters, model.elements, model.zbl)
    options = snap_options(model_dir, parameters, include)
    write_card(model_dir, "conformance-snap", path, family="snap", elements="In P", cutoff=cutoff, options=options)
    return "conformance-snap"


def install_committee(model_dir: Path) -> str:
    """Three Cu MTPs (levels 06, 10, 16) served as one in-process committee: its mean is what is checked."""
    from .test_committee import write_committee_dir

    write_committee_dir(model_dir)
    return "cu-committee-local"


def install_nequip(model_dir: Path) -> str:
    path = FIXTURES / "nequip" / "nequip-lr_LiCl_nequip0.5.6" / "deployed.pth"
    write_card(model_dir, "conformance-nequip", path, family="nequip", elements="Li Cl", cutoff=4.0)
    return "conformance-nequip"


def build_in_env(family: str, *arguments: str) -> None:
    """Run ``tests/FAMILY_env_helper.py build ...`` in the family's environment."""
    run_in_environment(family, str(HELPERS / f"{family}_env_helper.py"), "build", *arguments, timeout=300)


def install_mace(model_dir: Path) -> str:
    """A small random ScaleShiftMACE saved by mace-torch in its environment, served in float32 (the default)."""
    path = model_dir / "conformance-mace.model"
    elements = "H O Si Cu"
    build_in_env("mace", str(path), "--elements", *elements.split())
    write_card(model_dir, "conformance-mace", path, family="mace", elements=elements, cutoff=4.5)
    return "conformance-mace"


def install_fairchem(model_dir: Path) -> str:
    """A small random eSEN-like model in fairchem's inference-checkpoint format, served in float32."""
    path = model_dir / "conformance-fairchem.pt"
    build_in_env("fairchem", str(path), "--kind", "esen")
    write_card(model_dir, "conformance-fairchem", path, family="fairchem", elements="H O Si Cu", cutoff=4.5)
    return "conformance-fairchem"


def install_m3gnet(model_dir: Path) -> str:
    """A small random M3GNet saved by matgl (model.pt, state.pt), served in float32; forces scaled up by ``--scale``
    so that the finite-difference checks have forces to measure."""
    folder = model_dir / "m3gnet"
    build_in_env("m3gnet", str(folder), "--elements", "H", "O", "Si", "Cu", "--scale", "400")
    init_args = hashlib.sha256((folder / "float32" / "model.pt").read_bytes()).hexdigest()
    write_card(
        model_dir,
        "conformance-m3gnet",
        folder / "float32" / "state.pt",
        family="m3gnet",
        checkpoint="m3gnet/float32/state.pt",  # beside its model.pt (write_card also copies it to the top)
        elements="H O Si Cu",
        cutoff=4.0,
        options=f"{{init_args_sha256: {init_args}}}",
    )
    return "conformance-m3gnet"


def install_mattersim(model_dir: Path) -> str:
    """A small random M3Gnet saved by mattersim's ``Potential.save`` (the published format), served in float32."""
    path = model_dir / "conformance-mattersim.pth"
    build_in_env("mattersim", str(path), "--cutoff", "4.5")
    elements = "H C O Mg Al Si Ni Cu"
    write_card(model_dir, "conformance-mattersim", path, family="mattersim", elements=elements, cutoff=4.5)
    return "conformance-mattersim"


def install_grace(model_dir: Path) -> str:
    """A small random GRACE model exported by tensorpotential (a SavedModel archive), in float64."""
    path = model_dir / "conformance-grace.tar.gz"
    build_in_env("grace", str(path), "--elements", "H", "O", "Si", "Cu")
    write_card(model_dir, "conformance-grace", path, family="grace", elements="H O Si Cu", cutoff=4.5)
    return "conformance-grace"


def install_orb(model_dir: Path) -> str:
    """A small random orb-v3 conservative model (a state dict, as ORB publishes them), served in float32."""
    path = model_dir / "conformance-orb.ckpt"
    build_in_env("orb", str(path), "--dtype", "float32")
    options = (
        "{architecture: orb-v3-conservative, max_num_neighbors: 120, latent_dim: 32, base_mlp_hidden_dim: 64, "
        "head_mlp_hidden_dim: 32, num_message_passing_steps: 2}"
    )
    elements = "H C O Mg Al Si Ni Cu"
    write_card(model_dir, "conformance-orb", path, family="orb", elements=elements, cutoff=6.0, options=options)
    return "conformance-orb"


def install_gap(model_dir: Path) -> str:
    """A small distance_2b + SOAP GAP of Hf and O fitted with quippy's gap_fit (tests/data/gap/)."""
    path = HELPERS / "data" / "gap" / "HfO2_2b_soap.xml"
    write_card(model_dir, "conformance-gap", path, family="gap", elements="Hf O", cutoff=4.5)
    return "conformance-gap"


def install_hdnnp(model_dir: Path) -> str:
    """n2p2's Cu2S HDNNP (input.nn, scaling.data and two weights files) with its card."""
    from .test_hdnnp import install_n2p2

    return install_n2p2(model_dir, "Cu2S_PBE", "conformance-hdnnp")


@dataclass(frozen=True)
class Case:
    """How to get a model of one family: ``install`` puts its card (and checkpoint) into the model directory and
    returns the model's name; ``environment`` names the virtualenv it must run in when not this one."""

    install: Callable[[Path], str]
    environment: str | None = None


CASES: dict[str, Case] = {
    "sevennet": Case(lambda _: "7net-0"),  # weights in the sevenn wheel
    "chgnet": Case(lambda _: "chgnet-0.3.0"),  # weights in the chgnet wheel
    "mtp": Case(install_mtp),
    "ace": Case(install_ace),
    "snap": Case(install_snap),
    "nequip": Case(install_nequip),
    "mace": Case(install_mace, environment="mace"),
    "fairchem": Case(install_fairchem, environment="fairchem"),
    "orb": Case(install_orb, environment="orb"),
    "m3gnet": Case(install_m3gnet, environment="m3gnet"),
    "mattersim": Case(install_mattersim, environment="mattersim"),
    "grace": Case(install_grace, environment="grace"),
    "pair": Case(install_pair),
    "gap": Case(install_gap),
    "hdnnp": Case(install_hdnnp),
    "committee": Case(install_committee),
}


@pytest.fixture(scope="module", autouse=True)
def _threads() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine it is the fastest."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def conformance_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("conformance-models")


@pytest.fixture(scope="module")
def potentials(conformance_dir: Path) -> Callable[[str], Potential]:
    """Each family's model, installed and loaded through the registry on first use, then kept for the module."""
    loaded: dict[str, Potential] = {}

    def get(family: str) -> Potential:
        if family not in loaded:
            name = CASES[family].install(conformance_dir)
            loaded[family] = load_model(ModelRegistry(conformance_dir), name, "cpu")
        return loaded[family]

    return get


@pytest.fixture(scope="module")
def environment_results(conformance_dir: Path) -> Callable[[str], dict[str, dict]]:
    """Every check run by ``conformance_cases.py`` in a family's own environment on its small model, once a family."""
    results: dict[str, dict[str, dict]] = {}

    def get(family: str) -> dict[str, dict]:
        if family in results:
            return results[family]
        python = env_python(family)
        if not (python.exists() and (python.parents[1] / ".installed").exists()):
            message = f"the {family} environment .venv-{family} is missing or not finished: `make env-{family}`"
            if os.environ.get("CI"):
                raise RuntimeError(message)
            pytest.skip(message)
        name = CASES[family].install(conformance_dir)
        out = conformance_dir / f"{family}-conformance.json"
        arguments = ["--family", family, "--out", str(out), "--model-dir", str(conformance_dir), "--model", name]
        run_in_environment(family, str(HELPERS / "conformance_cases.py"), *arguments)
        results[family] = json.loads(out.read_text())
        return results[family]

    return get


def run_check(family: str, check: str, request: pytest.FixtureRequest) -> None:
    """Run one of ``conformance_cases.CHECKS`` on ``family``'s model, here or in the family's own environment."""
    if CASES[family].environment is not None:
        result = request.getfixturevalue("environment_results")(family)[check]
        assert result["ok"], f"in .venv-{family}: {result['message']}"
        measured = result["measured"]
    else:
        potential = request.getfixturevalue("potentials")(family)
        measured = conformance.CHECKS[check](potential, conformance.STRUCTURES[family](), conformance.TRAITS[family])
    if "skipped" in measured:  # a check that does not apply to the family's architecture
        pytest.skip(f"{family} {check}: {measured['skipped']}")
    print(f"{family} {check}: {measured}")


@pytest.mark.parametrize("check", conformance.CHECKS)
@pytest.mark.parametrize("family", CASES)
def test_conformance(family: str, check: str, request: pytest.FixtureRequest) -> None:
    """One check of ``conformance_cases.CHECKS`` (outputs, batch, translation, rotation, forces_gradient,
    stress_strain_derivative) on one family's model."""
    run_check(family, check, request)


def test_every_family_has_a_case() -> None:
    """A family added to the registry must add a conformance case (and every case is a registered family)."""
    missing = sorted(set(FAMILIES) - set(CASES))
    assert not missing, f"model families without a conformance case in tests/test_conformance.py: {missing}"
    assert set(CASES) <= set(FAMILIES), f"conformance cases of unknown families: {sorted(set(CASES) - set(FAMILIES))}"
    for table in ("STRUCTURES", "TRAITS"):
        lacking = sorted(set(CASES) - set(getattr(conformance, table)))
        assert not lacking, f"families without an entry in conformance_cases.{table}: {lacking}"
    tested = {name.removeprefix("check_") for name in dir(conformance) if name.startswith("check_")}
    assert tested == set(conformance.CHECKS), "every check_* function of conformance_cases must be in CHECKS"
