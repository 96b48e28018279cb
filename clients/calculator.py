"""An ASE calculator that evaluates structures on an mlipserve server, so ASE code runs unchanged."""

from __future__ import annotations

from typing import Any

from ase.calculators.calculator import CalculationFailed, Calculator, InputError, all_changes

from ..protocol import Property
from .client import Client
from .errors import RequestFailed, StructureFailed
from .options import DEFAULT_URL
from .results import Result


class RemoteCalculator(Calculator):
    """ASE ``Calculator`` backed by ``POST /v1/predict``.

    Energy, forces and (for periodic systems) stress come back from one request and are cached until the atoms
    change, so an optimizer asking for energy then forces costs one round trip.

    >>> atoms.calc = RemoteCalculator("http://127.0.0.1:8000", model="7net-0")  # doctest: +SKIP
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]  # noqa: RUF012 (ASE declares a list)

    def __init__(
        self,
        url: str = DEFAULT_URL,
        model: str | None = None,
        client: Client | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.client = client or Client(url, model=model, progress=False, api_key=api_key)
        self.model = model

    def calculate(self, atoms: Any = None, properties: Any = ("energy",), system_changes: Any = all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        assert self.atoms is not None  # set by Calculator.calculate
        periodic = bool(self.atoms.pbc.any())
        wanted: list[Property] = ["energy", "forces", "stress"] if periodic else ["energy", "forces"]
        try:
            result = self.client.predict(self.atoms, wanted, model=self.model, progress=False)
        except StructureFailed as error:
            raise InputError(str(error)) from error
        except RequestFailed as error:
            raise CalculationFailed(str(error)) from error
        assert isinstance(result, Result)  # one structure in, one result out
        self.results = {"energy": result.energy, "free_energy": result.energy, "forces": result.forces}
        if periodic:
            self.results["stress"] = result.stress_voigt
        self.model_info = result.model
