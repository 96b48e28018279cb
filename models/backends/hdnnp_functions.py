"""The elementwise functions of an n2p2 potential in torch: cutoff functions, activations, and the neighbour pairs of
angular symmetry functions.

Each follows n2p2's ``CutoffFunction`` / ``CoreFunction`` and ``NeuralNetwork::propagateLayer`` (read, not copied),
including the limits n2p2 puts on the logistic and softplus activations (beyond ±35 they are their asymptotes).
Cutoff functions are written so that autograd gives finite derivatives everywhere, also at and beyond ``rc``.
"""

from __future__ import annotations

import math

import torch

#: n2p2's EXP_LIMIT: beyond it the logistic and softplus activations take their limits.
EXP_LIMIT = 35.0
_TANH_NORM = 1.0 / math.tanh(1.0) ** 3  # CT_TANH: f(0) = 1


def cutoff_function(r: torch.Tensor, rc: torch.Tensor, kind: int, alpha: float) -> torch.Tensor:
    """n2p2's cutoff function of type ``kind`` (0-8) at distances ``r``, zero from ``rc`` on; ``rc`` broadcasts.

    Types 1 and 4-8 are 1 below the inner cutoff ``alpha * rc`` and f(x) of ``x = (r - alpha rc) / (rc - alpha rc)``
    above it; the tanh types 2 and 3 ignore ``alpha``, as n2p2 does.
    """
    inside = r < rc
    if kind == 0:  # CT_HARD
        return torch.where(inside, torch.ones_like(r * rc), torch.zeros_like(r * rc))
    if kind in (2, 3):  # CT_TANHU, CT_TANH
        t = torch.tanh(1.0 - torch.minimum(r, rc) / rc) ** 3
        return t * _TANH_NORM if kind == 3 else t
    inner = alpha * rc
    x = ((r - inner) / (rc - inner)).clamp(0.0, 1.0)
    if kind == 1:  # CT_COS
        return 0.5 * (torch.cos(math.pi * x) + 1.0)
    if kind == 4:  # CT_EXP: e * exp(1 / (x^2 - 1)), zero at x = 1 (kept finite for autograd)
        safe = torch.where(x < 1.0, x, torch.zeros_like(x))
        return torch.where(x < 1.0, math.e * torch.exp(1.0 / (safe * safe - 1.0)), torch.zeros_like(x))
    if kind == 5:  # CT_POLY1
        return (2.0 * x - 3.0) * x * x + 1.0
    if kind == 6:  # CT_POLY2
        return ((15.0 - 6.0 * x) * x - 10.0) * x**3 + 1.0
    if kind == 7:  # CT_POLY3
        return (x * (x * (20.0 * x - 70.0) + 84.0) - 35.0) * x**4 + 1.0
    if kind == 8:  # CT_POLY4
        return (x * (x * ((315.0 - 70.0 * x) * x - 540.0) + 420.0) - 126.0) * x**5 + 1.0
    raise ValueError(f"unknown n2p2 cutoff type {kind}")


def activation(x: torch.Tensor, letter: str) -> torch.Tensor:
    """n2p2's activation named by ``letter`` (``global_activation_short``)."""
    if letter == "l":
        return x
    if letter == "t":
        return torch.tanh(x)
    if letter == "s":
        inner = torch.sigmoid(x.clamp(-EXP_LIMIT, EXP_LIMIT))
        return torch.where(x > EXP_LIMIT, torch.ones_like(x), torch.where(x < -EXP_LIMIT, torch.zeros_like(x), inner))
    if letter == "p":
        inner = torch.log(1.0 + torch.exp(x.clamp(-EXP_LIMIT, EXP_LIMIT)))
        return torch.where(x > EXP_LIMIT, x, torch.where(x < -EXP_LIMIT, torch.zeros_like(x), inner))
    if letter == "r":
        return torch.relu(x)
    if letter == "g":
        return torch.exp(-0.5 * x * x)
    if letter == "c":
        return torch.cos(x)
    if letter == "S":
        return 1.0 - torch.sigmoid(x)
    if letter == "e":
        return torch.exp(-x)
    if letter == "h":
        return x * x
    raise ValueError(f"unknown n2p2 activation {letter!r}")


def integer_power(x: torch.Tensor, exponent: int) -> torch.Tensor:
    """``x ** exponent`` for an integer ``exponent >= 1`` by repeated squaring (n2p2's ``pow_int`` multiplies too)."""
    result, square = None, x
    while exponent:
        if exponent & 1:
            result = square if result is None else result * square
        exponent >>= 1
        if exponent:
            square = square * square
    return result if result is not None else torch.ones_like(x)


def pairs_within(senders: torch.Tensor, n_atoms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every unordered pair of edges that share a sender: (first, second) positions in ``senders``, first < second.

    ``senders`` must be sorted, so that each atom's edges are contiguous.
    """
    counts = torch.bincount(senders, minlength=n_atoms)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(senders.shape[0], device=senders.device) - starts[senders]
    partners = counts[senders] - 1 - position  # later edges of the same sender
    first, offsets = _expand(partners)
    return first, first + 1 + offsets


def pairs_across(senders_a: torch.Tensor, senders_b: torch.Tensor, n_atoms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair (edge of ``senders_a``, edge of ``senders_b``) with the same sender: positions in each.

    ``senders_b`` must be sorted.
    """
    counts = torch.bincount(senders_b, minlength=n_atoms)
    starts = torch.cumsum(counts, 0) - counts
    first, offsets = _expand(counts[senders_a])
    return first, starts[senders_a[first]] + offsets


def _expand(repeats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index i repeated ``repeats[i]`` times, 0..repeats[i]-1 for each): the pairs of a ragged enumeration."""
    index = torch.repeat_interleave(torch.arange(repeats.shape[0], device=repeats.device), repeats)
    begin = torch.cumsum(repeats, 0) - repeats
    return index, torch.arange(index.shape[0], device=repeats.device) - begin[index]
