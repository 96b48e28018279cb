"""A committee in one worker: every member model loaded in-process, answering with their mean and spread.

Serving the committee itself (``--model COMMITTEE``) needs its members' families in one environment; it is what
lets a committee relax (each step needs the mean forces) and stop a relaxation on its spread (``max_grade``).
Members served apart are combined by the HTTP front end instead (``server/api/committee.py``); both use
:func:`~mlipserve.models.committee.combine`, so both answer the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..cards import ModelCard
from ..committee import combine, member_cards
from ..potential import ALL_PROPERTIES, FORCES, STRESS, Potential, Prediction
from ..system import AtomicSystem


class CommitteePotential(Potential):
    """The mean of ``members``' predictions, with their spread as ``Prediction.uncertainty``."""

    uncertainty_kind = "committee"

    def __init__(self, card: ModelCard, members: Sequence[Potential]):
        self.card = card
        self.members = list(members)
        self.elements = frozenset.intersection(*(frozenset(member.elements) for member in self.members))
        self.cutoff = max(member.cutoff for member in self.members)
        self.dtype = self.members[0].dtype
        self.device = self.members[0].device
        self.implemented_properties = tuple(
            p for p in ALL_PROPERTIES if all(p in member.implemented_properties for member in self.members)
        )

    def predict_batch(
        self, systems: Sequence[AtomicSystem], properties: Sequence[str] = ALL_PROPERTIES
    ) -> list[Prediction]:
        asked = tuple(dict.fromkeys((*properties, FORCES)))  # the committee's figure is the members' force spread
        answers = [member.predict_batch(systems, asked) for member in self.members]
        predictions = []
        for index, system in enumerate(systems):
            prediction = combine([answer[index] for answer in answers], system.n_atoms)
            prediction.forces = prediction.forces if FORCES in properties else None
            prediction.stress = prediction.stress if STRESS in properties else None
            predictions.append(prediction)
        return predictions

    def check_structure(self, system: AtomicSystem) -> None:
        for member in self.members:
            member.check_structure(system)


def load_potential(card: ModelCard, checkpoint: Path, device: torch.device) -> CommitteePotential:
    """Load every member of ``card`` (each checked against its own card and checkpoint hash) on ``device``;
    ``checkpoint`` is unused: a committee has none of its own."""
    from ..loading import load_potential as load_member

    return CommitteePotential(card, [load_member(member, device) for member in member_cards(card)])
