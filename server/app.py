"""Put a server together: the HTTP front end (``api``) over the embedded transport or over Redis workers.

This is the one place that chooses a transport. In Redis mode nothing of the engine is imported, so the front end
process loads neither torch nor a model; in embedded mode the engine runs in threads of this process.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI

from ..models.registry import ModelRegistry
from .api.app import create_api
from .api.auth import Authenticator
from .config import ServerSettings
from .keys import KeyRing
from .quotas import LocalQuotas

log = logging.getLogger(__name__)


def create_app(settings: ServerSettings | None = None, registry: ModelRegistry | None = None) -> FastAPI:
    """Build the app for ``settings``; models start loading (embedded mode) when the app starts."""
    settings = settings or ServerSettings()
    registry = registry or ModelRegistry(settings.model_dir)
    for name in settings.models:
        registry.card(name)  # fail fast on a misspelt --model, or a card that could not be used
    keyring = KeyRing.load(settings.api_keys) if settings.api_keys else None  # KeysFileError names the problem
    if settings.redis_url:
        from .transport.redis.broker import RedisBroker, RedisWorkerDirectory
        from .transport.redis.quotas import RedisQuotas

        broker = RedisBroker(settings.redis_url, settings.queue_limit, settings.request_timeout)
        directory = RedisWorkerDirectory(broker, expected=settings.models)
        auth = Authenticator(keyring, RedisQuotas(broker.redis))  # the same quotas on every replica
        return create_api(settings, registry, broker, directory, auth=auth)

    from .transport.embedded import EmbeddedBroker, EmbeddedModelHost

    embedded = EmbeddedBroker(queue_limit=settings.queue_limit, timeout=settings.request_timeout)
    host = EmbeddedModelHost(
        registry,
        embedded,
        settings.models,
        settings.device,
        settings.batch,
        settings.torch_threads,
        device_options=settings.device_options,
    )

    async def start() -> None:
        host.start()

    async def stop() -> None:
        host.stop()

    auth = Authenticator(keyring, LocalQuotas())
    return create_api(settings, registry, embedded, host, on_start=start, on_stop=stop, auth=auth)
