"""Reader of MLIP ``.cfg`` configuration files, for the MLIP-2 ``calc-efs`` outputs used as test oracles.

A frame is ``BEGIN_CFG`` ... ``END_CFG`` with ``Size``, an optional ``Supercell`` (rows are lattice vectors; absent
for a molecule), ``AtomData`` (``id type cartes_x cartes_y cartes_z fx fy fz ...``), ``Energy`` (eV) and
``PlusStress`` (the virial in eV, order xx yy zz yz xz xy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class CfgFrame:
    types: np.ndarray  # (n,) MTP species index of each atom
    positions: np.ndarray  # (n, 3) Å
    cell: np.ndarray | None  # (3, 3) Å, None for a molecule
    forces: np.ndarray  # (n, 3) eV/Å
    energy: float  # eV
    virial: np.ndarray  # (3, 3) eV, MLIP's PlusStress


def read_cfg(path: Path) -> list[CfgFrame]:
    """All frames of a ``.cfg`` file."""
    lines = Path(path).read_text().splitlines()
    frames, index = [], 0
    while index < len(lines):
        if lines[index].strip() == "BEGIN_CFG":
            end = next(i for i in range(index, len(lines)) if lines[i].strip() == "END_CFG")
            frames.append(_frame(lines[index + 1 : end]))
            index = end
        index += 1
    return frames


def _frame(lines: list[str]) -> CfgFrame:
    fields: dict = {"cell": None}
    index = 0
    while index < len(lines):
        head = lines[index].split()
        key = head[0].rstrip(":") if head else ""
        if key == "Size":
            size = int(lines[index + 1])
            index += 2
        elif key == "Supercell":
            fields["cell"] = np.array([[float(v) for v in lines[index + k].split()] for k in (1, 2, 3)])
            index += 4
        elif key == "AtomData":
            columns = head[1:]
            table = np.array([[float(v) for v in lines[index + 1 + k].split()] for k in range(size)])
            column = {name: table[:, position] for position, name in enumerate(columns)}
            if "cartes_x" not in column:
                raise ValueError(f"AtomData without Cartesian coordinates: {columns}")
            fields["types"] = column["type"].astype(np.int64)
            fields["positions"] = np.stack([column[f"cartes_{a}"] for a in "xyz"], axis=1)
            fields["forces"] = np.stack([column[f"f{a}"] for a in "xyz"], axis=1)
            index += 1 + size
        elif key == "Energy":
            fields["energy"] = float(lines[index + 1])
            index += 2
        elif key == "PlusStress":
            xx, yy, zz, yz, xz, xy = (float(v) for v in lines[index + 1].split())
            fields["virial"] = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
            index += 2
        else:
            index += 1
    return CfgFrame(**fields)
