"""What the clients return: one :class:`Result` (or :class:`RelaxResult`) per structure, decoded from an answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..protocol import StopReason
from .errors import StructureFailed
from .options import ErrorMode

R = TypeVar("R", bound="Result")
RR = TypeVar("RR", bound="RelaxResult")


@dataclass
class Result:
    """One structure's result in ASE units; ``error`` is set (and the numbers are None) when it failed."""

    energy: float | None = None
    energy_per_atom: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    error: StructureFailed | None = None
    model: dict[str, Any] = field(default_factory=dict)
    #: From models that report one: ``kind``, ``value`` and named figures (and ``per_atom``, ``max_along_path``).
    uncertainty: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def stress_voigt(self) -> np.ndarray | None:
        """Stress as ASE's 6-vector (xx, yy, zz, yz, xz, xy)."""
        if self.stress is None:
            return None
        s = self.stress
        return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])

    @classmethod
    def from_entry(cls: type[R], local_index: int, offset: int, entry: dict[str, Any], model: dict[str, Any]) -> R:
        """Decode entry ``local_index`` of a request whose first structure is ``offset`` in the user's list."""
        if "error" in entry:
            error, index = entry["error"], offset + local_index
            message = error["message"].replace(f"structure {local_index}:", f"structure {index}:", 1)
            return cls(error=StructureFailed(index, error["code"], message), model=model)
        forces, stress = entry.get("forces"), entry.get("stress")
        return cls(
            energy=entry["energy"],
            energy_per_atom=entry["energy_per_atom"],
            forces=None if forces is None else np.asarray(forces, dtype=np.float64),
            stress=None if stress is None else np.asarray(stress, dtype=np.float64),
            model=model,
            uncertainty=entry.get("uncertainty"),
        )


@dataclass
class RelaxResult(Result):
    """One structure's relaxation: the final geometry and its energy, forces and stress, and how it ended."""

    atoms: Any = None
    steps: int | None = None
    converged: bool | None = None
    stop_reason: StopReason | None = None
    fmax: float | None = None
    #: ase.Atoms frames (energy in ``atoms.info["energy"]``, step in ``atoms.info["step"]``) if requested.
    trajectory: list[Any] = field(default_factory=list)

    @classmethod
    def from_entry(cls: type[RR], local_index: int, offset: int, entry: dict[str, Any], model: dict[str, Any]) -> RR:
        base = Result.from_entry(local_index, offset, entry, model)
        result = cls(**{name: getattr(base, name) for name in Result.__dataclass_fields__})
        if base.error is not None:
            return result
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        structure = entry["structure"]
        atoms = Atoms(numbers=structure["numbers"], positions=structure["positions"], cell=structure["cell"])
        atoms.pbc = structure["pbc"]
        properties = {"energy": base.energy, "forces": base.forces}
        if base.stress is not None:
            properties["stress"] = base.stress_voigt
        atoms.calc = SinglePointCalculator(atoms, **properties)
        result.atoms = atoms
        result.steps, result.converged = entry["steps"], entry["converged"]
        result.stop_reason, result.fmax = entry["stop_reason"], entry["fmax"]
        for frame in entry.get("trajectory") or []:
            image = Atoms(numbers=atoms.numbers, positions=frame["positions"], cell=frame["cell"], pbc=atoms.pbc)
            image.info.update(step=frame["step"], energy=frame["energy"])
            result.trajectory.append(image)
        return result

    def to_pymatgen(self) -> Any:
        """The relaxed geometry as a pymatgen Structure (periodic) or Molecule."""
        if self.atoms is None:
            return None
        from pymatgen.io.ase import AseAtomsAdaptor

        if self.atoms.pbc.all():
            return AseAtomsAdaptor.get_structure(self.atoms)
        return AseAtomsAdaptor.get_molecule(self.atoms)


def collect(
    chunks: Sequence[tuple[int, list[dict[str, Any]]]],
    payloads: Sequence[dict[str, Any]],
    errors: ErrorMode,
    kind: type[R],
) -> list[R]:
    """Decode the answers to chunked requests (``chunks`` of ``(offset, structures)``) into ``kind`` results, in
    input order; with ``errors="raise"`` the first failed structure raises its :class:`StructureFailed`."""
    results: list[R] = []
    for (offset, _), payload in zip(chunks, payloads, strict=True):
        model = payload["model"]
        results.extend(kind.from_entry(i, offset, entry, model) for i, entry in enumerate(payload["results"]))
    return checked(results, errors)


def checked(results: list[R], errors: ErrorMode) -> list[R]:
    """``results``, unless ``errors="raise"`` and one failed: then its :class:`StructureFailed` is raised."""
    if errors == "raise":
        for result in results:
            if result.error is not None:
                raise result.error
    return results
