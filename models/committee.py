"""Committees: a card of family ``committee`` names member models; its answer is their mean and their spread.

A committee card needs no checkpoint of its own::

    name: cu-committee
    family: committee
    version: "1"
    options: {members: [cu-mtp-10, cu-mtp-16, cu-mtp-20]}

The registry resolves it against the member cards (:func:`resolve_card`): its elements are those every member
covers, its cutoff the largest, its sha256 a digest of the members' names and hashes (so a response's ``model``
block pins the exact members). Members are served as usual; the HTTP front end fans a prediction out to each
member's queue and :func:`combine` merges their answers. Numpy only: the front end has no torch.

The spread is the population standard deviation over the members (ddof=0): per atom, the root mean square over
members of the distance of a member's force vector from the mean force; the energy's per atom. The committee's
figure (:attr:`Uncertainty.value`) is the largest per-atom force spread, eV/Å.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .cards import CardError, ModelCard
from .prediction import Prediction, Uncertainty

COMMITTEE_FAMILY = "committee"
#: The fields a committee card may leave out: the registry fills them from the members.
_FILLED = {"checkpoint": "", "sha256": "", "license": "", "elements": [], "cutoff": 0.0}


def is_committee(card: ModelCard) -> bool:
    return card.family == COMMITTEE_FAMILY


def members_of(card: ModelCard) -> tuple[str, ...]:
    """The member model names of a committee card, in the card's order."""
    return tuple(card.options.get("members") or ())


def card_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """A committee card's YAML with the fields the registry fills later; checks its ``options.members``."""
    name = data.get("name", "?")
    options = data.get("options") or {}
    members = options.get("members") if isinstance(options, dict) else None
    if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
        raise CardError(f"committee card {name!r} needs options.members: a list of model names")
    if len(set(members)) < 2 or len(set(members)) != len(members):
        raise CardError(f"committee card {name!r} needs two or more distinct members, not {members}")
    for key in ("checkpoint", "sha256"):
        if data.get(key):
            raise CardError(f"committee card {name!r} has no {key} of its own; its members have theirs")
    return dict(_FILLED) | dict(data)


def resolve_card(card: ModelCard, cards: Mapping[str, ModelCard]) -> ModelCard:
    """``card`` with the elements, cutoff, license and identity of its members (all in ``cards``); CardError if a
    member is unknown, is itself a committee, or the members share no element."""
    members = []
    for name in members_of(card):
        member = cards.get(name)
        if member is None:
            raise CardError(f"committee {card.name!r}: member {name!r} is no usable model card")
        if is_committee(member):
            raise CardError(f"committee {card.name!r}: member {name!r} is a committee itself")
        members.append(member)
    shared = [e for e in members[0].elements if all(e in m.elements for m in members[1:])]
    listed = card.elements or tuple(shared)
    if not listed or not set(listed) <= set(shared):
        raise CardError(f"committee {card.name!r}: its elements must be ones every member covers ({shared})")
    digest = hashlib.sha256("".join(f"{m.name}:{m.sha256}\n" for m in members).encode()).hexdigest()
    licenses = "; ".join(dict.fromkeys(m.license for m in members))
    return replace(
        card,
        elements=tuple(listed),
        cutoff=max(m.cutoff for m in members),
        sha256=digest,
        license=card.license or licenses,
        options=card.options | {"member_cards": tuple(members)},
    )


def member_cards(card: ModelCard) -> tuple[ModelCard, ...]:
    """The resolved member cards of a committee card (:func:`resolve_card`)."""
    return tuple(card.options.get("member_cards") or ())


def combine(predictions: Sequence[Prediction], n_atoms: int) -> Prediction:
    """The committee's prediction: the members' mean energy, forces and stress, with their spread.

    Forces (stress) are averaged where every member has them. ``uncertainty.per_atom`` holds each atom's force
    spread, ``components`` the energy's spread per atom (``energy_std_per_atom``, eV/atom), the largest and mean
    force spread (``forces_std_max``, ``forces_std_mean``, eV/Å), the largest stress component spread
    (``stress_std_max``, eV/Å³) and the number of members.
    """
    if len(predictions) < 2:
        raise ValueError("a committee needs two or more members' predictions")
    energies = np.array([p.energy for p in predictions], dtype=np.float64)
    components = {"members": float(len(predictions)), "energy_std_per_atom": float(energies.std() / n_atoms)}
    mean = Prediction(energy=float(energies.mean()))
    per_atom = None
    if all(p.forces is not None for p in predictions):
        forces = np.stack([np.asarray(p.forces, dtype=np.float64) for p in predictions])
        mean.forces = forces.mean(axis=0)
        per_atom = np.sqrt(((forces - mean.forces) ** 2).sum(axis=2).mean(axis=0))
        components |= {"forces_std_max": float(per_atom.max()), "forces_std_mean": float(per_atom.mean())}
    if all(p.stress is not None for p in predictions):
        stresses = np.stack([np.asarray(p.stress, dtype=np.float64) for p in predictions])
        mean.stress = stresses.mean(axis=0)
        components["stress_std_max"] = float(stresses.std(axis=0).max())
    value = components["forces_std_max"] if per_atom is not None else components["energy_std_per_atom"]
    mean.uncertainty = Uncertainty("committee", value, per_atom, components)
    return mean


def summary(card: ModelCard) -> dict[str, Any]:
    """What ``GET /v1/models`` says of a committee beyond its card: its members, installed when they all are."""
    members = member_cards(card)
    return {
        "members": list(members_of(card)),
        "installed": bool(members) and all(m.is_installed() for m in members),
        "environment": "its members' (each served as usual)",
    }
