"""A loaded :class:`~.potential.Potential` as an ASE calculator, in this process.

For running ASE's own optimizers, MD and NEB on exactly the model a worker serves: the tests and benchmarks compare
the batched engine with ASE this way, and a script can do the same without a server (``RemoteCalculator`` in
``mlipserve.clients`` is the one that goes through a server).
"""

from __future__ import annotations

from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .potential import Potential
from .system import AtomicSystem


class PotentialCalculator(Calculator):
    """Energy and forces (and, when asked for, the stress of a periodic structure) of one structure at a time,
    through the potential's host path (``Potential.predict``)."""

    implemented_properties = ("energy", "forces", "stress")

    def __init__(self, potential: Potential, **kwargs: object):
        super().__init__(**kwargs)
        self.potential = potential

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: tuple[str, ...] | list[str] = ("energy",),
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        periodic = bool(self.atoms.pbc.all())
        wanted = ("energy", "forces", "stress") if "stress" in properties and periodic else ("energy", "forces")
        [prediction] = self.potential.predict([AtomicSystem.from_ase(self.atoms)], wanted)
        self.results = {"energy": prediction.energy, "forces": prediction.forces}
        if prediction.stress is not None:
            self.results["stress"] = full_3x3_to_voigt_6_stress(prediction.stress)
