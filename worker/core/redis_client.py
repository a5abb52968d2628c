"""One way to build the Redis client from the settings (decoded strings, sane timeouts)."""

from __future__ import annotations

from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from worker.core.settings import Settings


def _options(settings: Settings) -> dict[str, Any]:
    return {
        "decode_responses": True,
        "socket_connect_timeout": settings.redis_timeout_seconds,
        "socket_timeout": settings.redis_timeout_seconds,
        "health_check_interval": 30,
    }


def redis_from_settings(settings: Settings) -> Redis:
    return Redis.from_url(settings.redis_url, **_options(settings))


def async_redis_from_settings(settings: Settings) -> AsyncRedis:
    """The same, for the event loop (hot read paths such as job status); create it inside the loop
    that uses it (the app's lifespan)."""
    return AsyncRedis.from_url(settings.redis_url, **_options(settings))
