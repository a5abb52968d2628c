"""One way to build the Redis client from the settings (decoded strings, sane timeouts)."""

from __future__ import annotations

from redis import Redis

from app.settings import Settings


def redis_from_settings(settings: Settings) -> Redis:
    return Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_connect_timeout=settings.redis_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        health_check_interval=30,
    )
