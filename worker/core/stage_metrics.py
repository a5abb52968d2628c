"""Engine stage durations as Prometheus-style histograms kept in Redis: workers add observations,
the API's ``/metrics`` reads them (``app/metrics.py``)."""

from __future__ import annotations

from redis import Redis

STAGE_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


def bucket_label(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(float(b))


def record_stage_duration(redis: Redis, prefix: str, stage: str, seconds: float) -> None:
    """Add one observation of ``stage`` lasting ``seconds`` (called by workers)."""
    key = f"{prefix}metrics:stage:{stage}"
    with redis.pipeline(transaction=True) as p:
        p.sadd(f"{prefix}metrics:stages", stage)
        p.hincrbyfloat(key, "sum", seconds)
        p.hincrby(key, "count", 1)
        for b in (*STAGE_BUCKETS, float("inf")):
            if seconds <= b:
                p.hincrby(key, bucket_label(b), 1)
        p.execute()
