"""The settings of the two processes, ``mlipserve serve`` and ``mlipserve worker``, with every default in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..models.registry import DEFAULT_MODEL, DEFAULT_MODEL_DIR
from .engine.batching import BatchPolicy


@dataclass(frozen=True)
class StructureLimits:
    """Per-structure limits enforced before a structure is queued."""

    max_atoms: int = 5000
    #: Two atoms closer than this (Å) are rejected as overlapping.
    min_distance: float = 0.5
    #: A periodic cell with a smaller volume (Å³) is rejected as singular.
    min_volume: float = 1e-3
    #: The most model work one MD run or NEB path may ask for: atoms × steps (× moving images for an NEB path).
    max_atom_steps: int = 10**10


@dataclass(frozen=True)
class DeviceOptions:
    """How a worker runs its model on the device beyond its card; all off by default, as each changes the numbers
    (``engine/device_options.py`` applies them)."""

    #: float32 matrix products on TensorFloat-32 tensor cores (CUDA; process-wide).
    tf32: bool = False
    #: ``torch.compile`` of the family's torch module.
    compile: bool = False
    #: cuEquivariance kernels (MACE, SevenNet; needs cuequivariance_torch and CUDA).
    cueq: bool = False

    def enabled(self) -> list[str]:
        return [name for name in ("tf32", "compile", "cueq") if getattr(self, name)]


@dataclass(frozen=True)
class ServerSettings:
    """What ``mlipserve serve`` is configured with."""

    host: str = "127.0.0.1"
    port: int = 8000
    #: Models this server hosts in its embedded workers, loaded at start-up; in Redis mode, the models whose
    #: workers /readyz waits for (the first is the default model of requests in both modes).
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    model_dir: Path = DEFAULT_MODEL_DIR
    #: "auto" picks CUDA when available.
    device: str = "auto"
    limits: StructureLimits = field(default_factory=StructureLimits)
    max_structures_per_request: int = 10_000
    max_atoms_per_request: int = 200_000
    #: Structures accepted but not yet running, over all models; beyond it requests get 503.
    queue_limit: int = 100_000
    #: Structures in one job (POST /v1/jobs); beyond it the job is refused with 413.
    max_structures_per_job: int = 1_000_000
    #: Seconds a finished job (and its results) is kept before it is forgotten.
    job_ttl: float = 24 * 3600.0
    batch: BatchPolicy = field(default_factory=BatchPolicy)
    device_options: DeviceOptions = field(default_factory=DeviceOptions)
    #: torch threads per worker; None uses every core available to the process.
    torch_threads: int | None = None
    #: With a Redis URL, requests go to standalone workers (`mlipserve worker`) through Redis Streams and no model
    #: is loaded in the server; without one, the models above run in this process (embedded mode).
    redis_url: str | None = None
    #: Seconds a request waits for its results before a 504.
    request_timeout: float = 3600.0
    #: Redis mode: queue work for a --model that has no live worker, for an autoscaler (KEDA) to start one on the
    #: queue's length, instead of answering 503 ``no_workers``; /readyz then needs Redis only.
    scale_from_zero: bool = False
    #: The keys file (names, hashes, scopes, rates; see ``server/keys.py``); None: the API is open.
    api_keys: Path | None = None
    #: Serve an open API (no keys) beyond loopback anyway.
    insecure: bool = False
    #: Origins whose pages may call the API from a browser (CORS); none by default.
    cors_origins: tuple[str, ...] = ()
    #: Largest JSON body, and largest multipart upload (a job's extxyz file), in bytes; refused with 413 while
    #: streaming, before the body is read whole.
    max_body_bytes: int = 100 * 2**20
    max_upload_bytes: int = 1 * 2**30
    #: Seconds a client may leave a request body stalled before 408.
    body_timeout: float = 30.0


@dataclass(frozen=True)
class RedisWorkerSettings:
    """What ``mlipserve worker`` is configured with."""

    redis_url: str
    model: str
    device: str = "auto"
    batch: BatchPolicy = field(default_factory=BatchPolicy)
    device_options: DeviceOptions = field(default_factory=DeviceOptions)
    #: A task unacknowledged this long (s) is taken over from its worker, presumed dead.
    claim_idle: float = 30.0
    #: Deliveries after which a task goes to the dead-letter stream instead of to a worker again.
    max_deliveries: int = 3
    heartbeat_interval: float = 2.0
    #: Seconds a heartbeat stays valid; a worker not heard from for this long counts as gone.
    heartbeat_ttl: float = 10.0
    #: Seconds a result stream is kept after its last write.
    result_ttl: float = 3600.0
    torch_threads: int | None = None
    #: Seconds a stopping worker spends finishing the tasks it holds before handing the rest back to the queue.
    drain_timeout: float = 60.0
    #: Port of the worker's /metrics, /healthz and /readyz (None: none served).
    metrics_port: int | None = None
