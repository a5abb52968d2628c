"""Typed service settings from the environment (prefix ``GANCOMPRESS_``; plain ``REDIS_URL`` too).

Every setting is documented in ``docs/settings.md`` with its default. The API, the worker
and ``gancompress serve`` read the same class, so one environment configures them all.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3
MIB = 1024**2


class Settings(BaseSettings):
    """Service configuration. Environment variables are ``GANCOMPRESS_<FIELD>`` in upper case."""

    model_config = SettingsConfigDict(env_prefix="GANCOMPRESS_", extra="ignore", populate_by_name=True)

    # --- Redis (job store and broker) -------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("GANCOMPRESS_REDIS_URL", "REDIS_URL", "redis_url"),
        description="Redis for job records and the Celery broker. `REDIS_URL` is honored too.",
    )
    redis_timeout_seconds: float = Field(
        3.0,
        gt=0,
        le=60,
        description="Connect and read timeout of Redis calls: an unreachable or stalled Redis is a 503 "
        "with Retry-After after this long, not a hung request.",
    )
    redis_prefix: str = Field("gc:", description="Prefix of every Redis key this service writes.")
    queue: str = Field("gancompress", description="Celery queue the jobs go to.")

    # --- Artifact store ----------------------------------------------------------------------
    storage_url: str = Field(
        "./var/artifacts",
        description="Where uploads and artifacts live: a directory, file:///dir or s3://bucket/prefix.",
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, ...).")
    s3_region: str = Field("us-east-1", description="S3 region name.")
    tmp_dir: Path | None = Field(None, description="Staging dir for uploads (default: system temp).")
    data_dir: Path = Field(Path("var"), description="`serve`: where the embedded Redis keeps its data.")

    # --- Limits -------------------------------------------------------------------------------
    max_upload_bytes: int = Field(512 * MIB, ge=1, description="Largest model upload accepted.")
    max_calibration_bytes: int = Field(1 * GIB, ge=1, description="Largest calibration upload accepted.")
    max_job_seconds: float = Field(
        6 * 3600.0, gt=0, description="Largest distillation budget a job may ask for (else 422)."
    )
    job_overhead_seconds: float = Field(
        900.0, gt=0, description="Time allowed on top of the distillation budget (import, export, measure)."
    )
    sandbox_memory_bytes: int = Field(
        8 * GIB,
        ge=0,
        description="Address-space limit (RLIMIT_AS) of the sandboxed engine; 0: none (CUDA workers, "
        "whose driver maps far more address space than it uses).",
    )
    sandbox_file_bytes: int = Field(4 * GIB, ge=MIB, description="Largest file the sandbox may write.")
    sandbox_network: bool = Field(
        False, description="Allow the sandbox network access (default: a new, empty network namespace)."
    )
    require_isolation: bool = Field(
        False,
        description="Refuse TorchScript jobs (`isolation_unavailable`) where the converter sandbox "
        "(bubblewrap) cannot isolate the model's code; ONNX uploads run no code and are unaffected.",
    )
    sandbox_threads: int = Field(0, ge=0, description="OMP/MKL threads in the sandbox (0: leave default).")
    kill_grace_seconds: float = Field(5.0, ge=0, description="SIGTERM to SIGKILL delay when stopping a job.")
    heartbeat_timeout_seconds: float = Field(
        120.0, gt=0, description="A running job without a heartbeat this long is failed `worker_lost`."
    )
    worker_concurrency: int = Field(1, ge=1, description="Jobs one worker runs at a time.")

    # --- API ----------------------------------------------------------------------------------
    api_keys: str = Field(
        "", description="Comma-separated `name:key` (or bare keys). Empty: no authentication."
    )
    idempotency_ttl_seconds: int = Field(86400, ge=1, description="How long an Idempotency-Key is kept.")
    retry_after_seconds: int = Field(2, ge=1, description="Retry-After sent with 202 responses.")
    page_size_max: int = Field(100, ge=1, description="Largest `limit` of GET /v1/jobs.")

    @field_validator("redis_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return v if not v or v.endswith(":") else v + ":"

    def keys(self) -> dict[str, str]:
        """API keys as ``{key: owner name}``. A bare key's owner is ``key-`` and the first 12 hex
        digits of its sha256: stable whatever its position in the list (removing one key never
        hands its jobs to another). A name given to two keys, or a key given twice, is refused:
        ``ValueError`` at start."""
        out: dict[str, str] = {}
        for item in filter(None, (s.strip() for s in self.api_keys.split(","))):
            name, sep, key = item.partition(":")
            if not sep:
                name, key = "key-" + hashlib.sha256(item.encode()).hexdigest()[:12], item
            name, key = name.strip(), key.strip()
            if not name or not key:
                raise ValueError(f"GANCOMPRESS_API_KEYS: {item!r} needs a name and a key (name:key)")
            if key in out:
                raise ValueError(
                    f"GANCOMPRESS_API_KEYS: a key is listed twice (names {out[key]!r}, {name!r})"
                )
            if name in out.values():
                raise ValueError(
                    f"GANCOMPRESS_API_KEYS: the name {name!r} is given to two keys; each key needs its own "
                    "name (one owner per key)"
                )
            out[key] = name
        return out

    def job_limits(self, budget_seconds: float) -> tuple[float, float, float]:
        """``(sandbox wall clock, Celery soft limit, Celery hard limit)`` in seconds for a job whose
        distillation budget is ``budget_seconds``. Each is strictly larger than the one before, so the
        sandbox's own timeout fires first and the Celery limits are a backstop."""
        wall = budget_seconds + self.job_overhead_seconds
        return wall, wall + 30.0, wall + 90.0

    def visibility_timeout(self) -> int:
        """Broker visibility timeout: above the hard limit of the longest job allowed."""
        return int(self.job_limits(self.max_job_seconds)[2] + 600)

    @property
    def embedded_redis(self) -> bool:
        """True when no Redis was configured in the environment (``serve`` starts one)."""
        return not (os.environ.get("REDIS_URL") or os.environ.get("GANCOMPRESS_REDIS_URL"))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read from the environment once)."""
    return Settings()
