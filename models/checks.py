"""The structure checks that the server and every potential share; free of torch, so the HTTP front end may use them.

:func:`check_elements` is the one element check of mlipserve: the server runs it with the card's atomic numbers
before queueing a structure, :meth:`~mlipserve.models.potential.Potential.check` with the loaded potential's own.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
from ase.data import chemical_symbols

from ..errors import ErrorCode


class StructureRejected(ValueError):
    """A structure this model cannot evaluate; ``code`` says why, ``message`` says it to a person."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message


def check_elements(model: str, numbers: np.ndarray, covered: Collection[int]) -> None:
    """Raise :class:`StructureRejected` (``element_not_covered``) naming each element of ``numbers`` not in
    ``covered``, in order of atomic number."""
    missing = sorted(set(np.unique(numbers).tolist()) - set(covered))
    if missing:
        symbols = ", ".join(_symbol(z) for z in missing)
        raise StructureRejected(ErrorCode.ELEMENT_NOT_COVERED, f"element(s) {symbols} not covered by model {model!r}")


def _symbol(number: int) -> str:
    return chemical_symbols[number] if 0 < number < len(chemical_symbols) else str(number)
