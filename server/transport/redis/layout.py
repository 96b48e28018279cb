"""Where mlipserve keeps things in Redis. One stream of tasks per model, read by a consumer group of workers.

- ``mlipserve:tasks:<model>``: stream of tasks (field ``m``: a msgpack task); consumer group ``workers``.
- ``mlipserve:dead:<model>``: dead-letter stream of tasks that failed too often (a worker died on them each time).
- ``mlipserve:replies:<server>``: stream of results for one server process (field ``m``: a msgpack result; field
  ``p`` instead: a msgpack progress message, an MD frame), expiring ``result_ttl`` seconds after its last write.
- ``mlipserve:checkpoint:<task>``: the latest checkpoint of a running MD task (msgpack), for a worker that takes the
  task over; deleted when the task's result is delivered, else expiring :data:`CHECKPOINT_TTL` seconds after its
  last write.
- ``mlipserve:workers:<model>:<worker>``: a worker's heartbeat (JSON), expiring unless refreshed.
"""

from __future__ import annotations

GROUP = "workers"
PREFIX = "mlipserve"
#: Seconds a checkpoint is kept after its last write (a day): longer than any task waits to be taken over.
CHECKPOINT_TTL = 86_400


def task_stream(model: str) -> str:
    return f"{PREFIX}:tasks:{model}"


def dead_letter_stream(model: str) -> str:
    return f"{PREFIX}:dead:{model}"


def reply_stream(server_id: str) -> str:
    return f"{PREFIX}:replies:{server_id}"


def checkpoint_key(task_id: str) -> str:
    return f"{PREFIX}:checkpoint:{task_id}"


def heartbeat_key(model: str, worker_id: str) -> str:
    return f"{PREFIX}:workers:{model}:{worker_id}"


def heartbeat_pattern(model: str = "*") -> str:
    return f"{PREFIX}:workers:{model}:*"


def model_of_heartbeat(key: str) -> str:
    """The model name in a heartbeat key (model names may contain ':')."""
    return key[len(f"{PREFIX}:workers:") :].rsplit(":", 1)[0]
