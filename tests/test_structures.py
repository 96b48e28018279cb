"""The three structure forms of the API decode to the same system."""

from __future__ import annotations

import io

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.io import write
from mlipserve.clients.encoding import chunked, encode_structure
from mlipserve.server.api.structures import decode_structure
from pymatgen.io.ase import AseAtomsAdaptor


def text_of(atoms, format: str) -> str:
    handle = io.BytesIO() if format == "cif" else io.StringIO()  # ase's CIF writer wants bytes
    write(handle, atoms, format=format)
    text = handle.getvalue()
    return text.decode() if isinstance(text, bytes) else text


@pytest.fixture()
def crystal():
    atoms = bulk("GaAs", "zincblende", a=5.65) * (2, 1, 1)
    atoms.rattle(0.02, seed=1)
    return atoms


def assert_same(system, atoms) -> None:
    np.testing.assert_array_equal(system.numbers, atoms.numbers)
    np.testing.assert_allclose(system.positions, atoms.positions, atol=1e-5)
    np.testing.assert_allclose(system.cell, atoms.cell.array, atol=1e-5)
    np.testing.assert_array_equal(system.pbc, atoms.pbc)


@pytest.mark.parametrize("form", ["numbers", "symbols", "pymatgen", "extxyz", "cif", "poscar"])
def test_forms_decode_to_the_same_crystal(crystal, form: str) -> None:
    if form == "numbers":
        data = encode_structure(crystal)
    elif form == "symbols":
        data = {**encode_structure(crystal), "symbols": crystal.get_chemical_symbols()}
        del data["numbers"]
    elif form == "pymatgen":
        data = AseAtomsAdaptor.get_structure(crystal).as_dict()
    else:
        data = {"format": form, "text": text_of(crystal, {"poscar": "vasp"}.get(form, form))}
    system = decode_structure(0, data)
    if form == "cif":  # CIF stores a standardised cell: compare what is invariant
        assert sorted(system.numbers) == sorted(crystal.numbers)
        assert system.volume == pytest.approx(crystal.get_volume(), rel=1e-5)
    else:
        assert_same(system, crystal)


def test_molecule_forms() -> None:
    water = molecule("H2O")
    arrays = decode_structure(0, {"symbols": ["O", "H", "H"], "positions": water.positions.tolist()})
    assert not arrays.pbc.any() and not arrays.cell.any()
    from pymatgen.core import Molecule

    pmg = decode_structure(0, Molecule(water.get_chemical_symbols(), water.positions).as_dict())
    assert_same(pmg, water)
    assert_same(decode_structure(0, encode_structure(AseAtomsAdaptor.get_molecule(water))), water)


def test_multi_frame_text_is_refused(crystal) -> None:
    handle = io.StringIO()
    write(handle, [crystal, crystal], format="extxyz")
    with pytest.raises(ValueError, match="holds 2 structures"):
        decode_structure(4, {"format": "extxyz", "text": handle.getvalue()})


def test_client_chunks_by_count_and_atoms() -> None:
    encoded = [{"numbers": [1] * n} for n in (3, 3, 3, 10, 1, 1)]
    chunks = list(chunked(encoded, max_structures=2, max_atoms=8))
    assert [(start, [len(s["numbers"]) for s in chunk]) for start, chunk in chunks] == [
        (0, [3, 3]),
        (2, [3]),
        (3, [10]),
        (4, [1, 1]),
    ]
