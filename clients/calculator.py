"""An ASE calculator that evaluates structures on an mlipserve server, so ASE code runs unchanged."""

from __future__ import annotations

from typing import Any

from ase.calculators.calculator import CalculationFailed, Calculator, InputError, all_changes

from .client import DEFAULT_URL, Client
from .results import RequestFailed, StructureFailed


class RemoteCalculator(Calculator):
    """ASE ``Calculator`` backed by ``POST /v1/predict``.

    Energy, forces and (for periodic systems) stress come back from one request and are cached until the atoms
    change, so an optimizer asking for energy then forces costs one round trip.

    >>> atoms.calc = RemoteCalculator("http://127.0.0.1:8000", model="7net-0")  # doctest: +SKIP
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, url: str = DEFAULT_URL, model: str | None = None, client: Client | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.client = client or Client(url, model=model, progress=False)
        self.model = model

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        periodic = bool(self.atoms.pbc.any())
        wanted = ["energy", "forces", "stress"] if periodic else ["energy", "forces"]
        try:
            result = self.client.predict(self.atoms, wanted, model=self.model, progress=False)
        except StructureFailed as error:
            raise InputError(str(error)) from error
        except RequestFailed as error:
            raise CalculationFailed(str(error)) from error
        self.results = {"energy": result.energy, "free_energy": result.energy, "forces": result.forces}
        if periodic:
            self.results["stress"] = result.stress_voigt
        self.model_info = result.model
