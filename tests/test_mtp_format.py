"""The ``.mtp`` reader: every trained fixture parses as motep reads it; every unsupported variant gets its own error.

Variants that the shared fixtures do not hold (old key names, comments, ``.almtp`` tails, other radial bases,
fork-only keys) are made here from a real file by the smallest textual edit that turns it into that variant.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from mlipserve.models.backends.mtp_format import MTPFormatError, parse_mtp, read_mtp

from .conftest import FIXTURES

MTP_FIXTURES = FIXTURES / "mtp"
TRAINED = sorted(p for p in MTP_FIXTURES.rglob("*.mtp") if p.name != "initial.mtp")
AUAGCU_06 = MTP_FIXTURES / "motep" / "crystals_multi_AuAgCu_3species" / "06" / "pot.mtp"


def _label(path: Path) -> str:
    return str(path.relative_to(MTP_FIXTURES))


@pytest.mark.parametrize("path", TRAINED, ids=_label)
def test_trained_files_parse_as_motep_reads_them(path: Path) -> None:
    if sys.version_info < (3, 11):  # motep needs Python >= 3.11; from there on (dev extra) it must be installed
        pytest.importorskip("motep")
    from motep.io.mlip.mtp import read_mtp as motep_read_mtp

    ours, theirs = read_mtp(path), motep_read_mtp(path)
    assert ours.species_count == theirs.species_count
    assert ours.scaling == theirs.scaling
    assert (ours.min_dist, ours.max_dist) == (theirs.radial_basis.min, theirs.radial_basis.max)
    assert ours.radial_basis_size == theirs.radial_basis.size
    np.testing.assert_array_equal(ours.radial_coeffs, theirs.radial_coeffs)
    np.testing.assert_array_equal(ours.alpha_index_basic, theirs.alpha_index_basic)
    np.testing.assert_array_equal(ours.alpha_index_times, theirs.alpha_index_times)
    np.testing.assert_array_equal(ours.alpha_moment_mapping, theirs.alpha_moment_mapping)
    np.testing.assert_array_equal(ours.species_coeffs, theirs.species_coeffs)
    np.testing.assert_array_equal(ours.moment_coeffs, theirs.moment_coeffs)
    assert ours.alpha_moments_count == theirs.alpha_moments_count


def test_level_sizes_follow_the_mlip_templates() -> None:
    level_20 = read_mtp(MTP_FIXTURES / "motep" / "crystals_cubic_Cu_1species" / "20" / "pot.mtp")
    assert level_20.level_sizes == {
        "radial_funcs_count": 5,
        "alpha_moments_count": 1352,
        "alpha_index_basic_count": 295,
        "alpha_index_times_count": 6349,
        "alpha_scalar_moments": 288,
    }
    five = read_mtp(MTP_FIXTURES / "asemtp_FeCoNiCrAl_5species" / "pot.mtp")
    assert five.species_count == 5 and five.radial_coeffs.shape == (5, 5, 4, 8) and five.max_dist == 5.0


def _same_parameters(a, b) -> None:
    for field in ("radial_coeffs", "alpha_index_basic", "alpha_index_times", "species_coeffs", "moment_coeffs"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert (a.scaling, a.min_dist, a.max_dist, a.radial_basis_size) == (
        b.scaling,
        b.min_dist,
        b.max_dist,
        b.radial_basis_size,
    )


def test_old_key_names_comments_and_basis_scaling_read_the_same() -> None:
    text = AUAGCU_06.read_text()
    reference = parse_mtp(text)
    scaling_line = next(line for line in text.splitlines() if line.startswith("scaling"))
    old = (
        "# DATE: 2024-01-01  UNITS: metal  CONTRIBUTOR: someone\n# a second comment line\n"
        + text.replace(scaling_line + "\n", "")  # global scaling moves into the basis block, as MLIP-2 wrote it
        .replace("radial_basis_type = RBChebyshev\n", f"radial_basis_type = RBChebyshev\n\t{scaling_line}\n")
        .replace("min_dist", "min_val")
        .replace("max_dist", "max_val")
        .replace("radial_basis_size", "basis_size")
        .replace("\n", "\r\n")  # Windows line ends
    )
    assert "min_val" in old and "\tscaling" in old
    _same_parameters(parse_mtp(old), reference)


def test_missing_scaling_means_one() -> None:
    text = AUAGCU_06.read_text()
    scaling_line = next(line for line in text.splitlines() if line.startswith("scaling"))
    assert parse_mtp(text.replace(scaling_line + "\n", "")).scaling == 1.0
    assert parse_mtp(text).scaling != 1.0


def test_untrained_template_is_refused() -> None:
    with pytest.raises(MTPFormatError, match=r"initial\.mtp: untrained MTP template"):
        read_mtp(MTP_FIXTURES / "motep" / "crystals_cubic_Cu_1species" / "10" / "initial.mtp")


@pytest.mark.parametrize("name", ["02.mmtp", "10.mmtp"])
def test_magnetic_mtp_is_refused(name: str) -> None:
    with pytest.raises(MTPFormatError, match=r"magnetic MTP"):
        read_mtp(MTP_FIXTURES / "motep" / "magnetic" / name)


def test_magnetic_basis_block_is_refused() -> None:
    text = AUAGCU_06.read_text().replace(
        "\tradial_funcs_count",
        "magnetic_basis_type = BChebyshev\n\tmin_val = -3\n\tmax_val = 3\n\tbasis_size = 2\n\tradial_funcs_count",
    )
    with pytest.raises(MTPFormatError, match=r"magnetic MTP \(magnetic_basis_type"):
        parse_mtp(text)


def test_almtp_binary_tail_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pot.almtp"
    path.write_bytes(AUAGCU_06.read_bytes() + b"\n#MVS_v1.1\n" + bytes(range(256)) * 4)
    with pytest.raises(MTPFormatError, match=r"pot\.almtp: MLIP-3 active-learning file \(\.almtp\)"):
        read_mtp(path)


@pytest.mark.parametrize("basis", ["RBChebyshev_repuls", "BChebyshev", "RBShapeev", "RBTaylor", "RB_for_repulsion"])
def test_other_radial_bases_are_refused(basis: str) -> None:
    text = AUAGCU_06.read_text().replace("radial_basis_type = RBChebyshev", f"radial_basis_type = {basis}")
    with pytest.raises(MTPFormatError, match=rf"radial basis '{basis}' is not supported"):
        parse_mtp(text)


def test_fork_extension_key_is_refused() -> None:
    text = AUAGCU_06.read_text().replace("species_count = 3\n", "species_count = 3\nzbl_repulsion = 40 1\n")
    with pytest.raises(MTPFormatError, match=r"unknown key 'zbl_repulsion'"):
        parse_mtp(text)


def test_atomic_number_pair_labels_are_refused() -> None:
    text = AUAGCU_06.read_text()
    relabelled = text.replace("\t\t0-1\n", "\t\t79-47\n")
    with pytest.raises(MTPFormatError, match=r"species-pair label '79-47'"):
        parse_mtp(relabelled)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("version = 1.1.0", "version = 1.0.0"), r"version '1\.0\.0' is not supported"),
        (("MTP\n", "NOT\n"), r"not an MTP file"),
        (("species_count = 3", "species_count = 2"), r"species-pair label"),
        (("alpha_scalar_moments = 5", "alpha_scalar_moments = 6"), r"alpha_scalar_moments = 6, but the list has 5"),
        (("radial_basis_size = 8", "radial_basis_size = 7"), r"expected radial_basis_size = 7"),
        (("{0, 5, 1, 7}}", "{0, 5, 1, 9}}"), r"alpha_index_times refers to moments outside"),
        (("alpha_moment_mapping = {0,", "alpha_moment_mapping = {20,"), r"alpha_moment_mapping refers to moments"),
        (("species_coeffs = {2.5", "species_coeffs = {x2.5"), r"species_coeffs = 'x2\.5"),
    ],
)
def test_malformed_files_name_the_problem(edit: tuple[str, str], message: str) -> None:
    text = AUAGCU_06.read_text()
    assert edit[0] in text
    with pytest.raises(MTPFormatError, match=message):
        parse_mtp(text.replace(edit[0], edit[1], 1))


def test_truncated_file_is_refused() -> None:
    text = AUAGCU_06.read_text()
    with pytest.raises(MTPFormatError, match=r"incomplete trained MTP: moment_coeffs missing"):
        parse_mtp(text[: text.index("moment_coeffs")])
