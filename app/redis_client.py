"""One way to build the Redis client from the settings (decoded strings, sane timeouts)."""

from __future__ import annotations

from redis import Redis

from app.settings import Settings


def redis_from_settings(settings: Settings) -> Redis:
    return Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=30,
    )
