"""Relax many structures in process with one potential: the engine's in-flight batching without a server.

Structures join the :class:`~.relaxation.RelaxationSet` while their atoms fit in the batch budget; each round is
one call of the potential's tensor path (:meth:`~mlipserve.models.potential.Potential.predict_tensors`) and one
optimizer step of every member on the potential's device; those that end leave and waiting ones take their place.
Used by benchmarks and scripts; the server's workers run the same rounds through their scheduler.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from ...models.potential import Potential
from ...models.system import AtomicSystem
from ...models.tensor_batch import NeighborSource
from .options import RelaxSpec
from .relaxation import Ended, RelaxationSet


def relax_all(
    potential: Potential,
    systems: Sequence[AtomicSystem],
    spec: RelaxSpec | Sequence[RelaxSpec],
    max_atoms: int = 8192,
    neighbors: NeighborSource | None = None,
    observe: Callable[[int, int], None] | None = None,
) -> list[Ended]:
    """Relax every system (one spec for all, or one each); their :class:`Ended` in input order, keys ``"0"``...

    At most ``max_atoms`` atoms are relaxed at once (a larger structure runs alone). ``observe``, when given, is
    called after every round with the members and atoms that round evaluated. A model error propagates.
    """
    specs = [spec] * len(systems) if isinstance(spec, RelaxSpec) else list(spec)
    if len(specs) != len(systems):
        raise ValueError(f"{len(specs)} specs for {len(systems)} systems")
    optimizers = {s.options.optimizer for s in specs}
    if len(optimizers) > 1:
        raise ValueError(f"one optimizer per call, not {sorted(optimizers)}")
    relaxations = RelaxationSet(optimizers.pop() if optimizers else "fire", potential.device, neighbors)
    waiting = deque(range(len(systems)))
    ended: dict[str, Ended] = {}
    while waiting or len(relaxations):
        room = max_atoms - relaxations.n_atoms
        while waiting and (len(relaxations) == 0 or systems[waiting[0]].n_atoms <= room):
            index = waiting.popleft()
            relaxations.add(str(index), systems[index], specs[index])
            room -= systems[index].n_atoms
        batch = relaxations.batch()
        prediction = potential.predict_tensors(batch, relaxations.properties())
        if observe is not None:
            observe(batch.n_systems, int(batch.positions.shape[0]))
        ended.update((e.key, e) for e in relaxations.advance_tensors(prediction))
    return [ended[str(i)] for i in range(len(systems))]
