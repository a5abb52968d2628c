"""Job records in Redis and their state machine (the source of truth; not Celery's result backend).

::

    queued ──> running ──> succeeded
       │          ├──────> failed
       │          └──────> canceled
       ├─────────────────> canceled
       └─────────────────> failed      (e.g. it could not be enqueued)

Every state change is a compare-and-set done by one Lua script: it applies only if the record is in
one of the expected states, so a redelivered message cannot run a job twice (``queued -> running``
succeeds once) and nothing resurrects a finished or canceled job. Progress writes apply only while
the job is ``running``.

Keys (``P`` is the configured prefix): ``P job:<id>`` (hash), ``P seq`` (counter),
``P jobs:all:<owner>`` and ``P jobs:<state>:<owner>`` (sorted sets by creation order, for listing),
``P state:<state>`` (sorted sets over all owners, for metrics and the stale-job reaper).
"""

from __future__ import annotations

import base64
import binascii
import builtins  # JobStore.list shadows the builtin inside the class
import json
import logging
import time
import uuid
from collections.abc import Iterable
from enum import StrEnum
from typing import Any, cast

from pydantic import BaseModel, Field
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from worker.errors import ConflictError, InvalidCursorError, WorkerLostError

log = logging.getLogger(__name__)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED})
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELED, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELED: frozenset(),
}


class InvalidTransitionError(ConflictError):
    code = "invalid_transition"
    title = "State transition not allowed"


def allowed(src: JobState, dst: JobState) -> bool:
    return dst in TRANSITIONS[src]


class JobRecord(BaseModel):
    """What Redis holds about one job (times are Unix seconds)."""

    id: str
    owner: str
    state: JobState
    stage: str = "queued"
    progress: dict[str, Any] = Field(default_factory=dict)
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    model_id: str
    model_format: str
    calibration: dict[str, str] = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict)
    error: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    artifacts: list[str] = Field(default_factory=list)
    cancel_requested: bool = False
    heartbeat: float | None = None
    worker: str | None = None
    seq: int = 0

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


_JSON_FIELDS = ("progress", "calibration", "spec", "error", "summary", "artifacts")
_FLOAT_FIELDS = ("created_at", "started_at", "finished_at", "heartbeat")

_TRANSITION_LUA = """
local key = KEYS[1]
local prefix, new = ARGV[1], ARGV[2]
local cur = redis.call('HGET', key, 'state')
if not cur then return {0, ''} end
local ok = false
for s in string.gmatch(ARGV[3], '[^,]+') do if s == cur then ok = true end end
if not ok then return {0, cur} end
local id = redis.call('HGET', key, 'id')
local owner = redis.call('HGET', key, 'owner')
local seq = redis.call('HGET', key, 'seq')
for i = 4, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', key, 'state', new)
redis.call('ZREM', prefix .. 'jobs:' .. cur .. ':' .. owner, id)
redis.call('ZADD', prefix .. 'jobs:' .. new .. ':' .. owner, seq, id)
redis.call('ZREM', prefix .. 'state:' .. cur, id)
redis.call('ZADD', prefix .. 'state:' .. new, seq, id)
return {1, cur}
"""

_UPDATE_IF_RUNNING_LUA = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

_DELETE_LUA = """
local key = KEYS[1]
local prefix = ARGV[1]
local cur = redis.call('HGET', key, 'state')
if not cur then return '' end
if cur ~= 'succeeded' and cur ~= 'failed' and cur ~= 'canceled' then return cur end
local id = redis.call('HGET', key, 'id')
local owner = redis.call('HGET', key, 'owner')
redis.call('DEL', key)
redis.call('ZREM', prefix .. 'jobs:all:' .. owner, id)
redis.call('ZREM', prefix .. 'jobs:' .. cur .. ':' .. owner, id)
redis.call('ZREM', prefix .. 'state:' .. cur, id)
return 'deleted'
"""


def _encode(fields: dict[str, Any]) -> list[str]:
    flat: list[str] = []
    for k, v in fields.items():
        if k in _JSON_FIELDS:
            v = json.dumps(v)
        elif isinstance(v, bool):
            v = "1" if v else "0"
        elif v is None:
            v = ""
        flat += [k, str(v)]
    return flat


def _decode(raw: dict[str, str]) -> JobRecord:
    d: dict[str, Any] = dict(raw)
    for k in _JSON_FIELDS:
        if k in d:
            d[k] = json.loads(d[k]) if d[k] else None
    for k in _FLOAT_FIELDS:
        if k in d:
            d[k] = float(d[k]) if d[k] else None
    d["cancel_requested"] = d.get("cancel_requested") == "1"
    d["seq"] = int(d.get("seq") or 0)
    d["worker"] = d.get("worker") or None
    for k in ("progress", "calibration", "spec"):
        if d.get(k) is None:
            d.pop(k, None)
    d["artifacts"] = d.get("artifacts") or []
    return JobRecord.model_validate(d)


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("s"):
            raise ValueError(text)
        return int(text[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError) as e:
        raise InvalidCursorError(f"cursor {cursor!r} is not one this service returned") from e


class JobStore:
    """Job records over a ``redis.Redis`` client created with ``decode_responses=True``."""

    def __init__(self, redis: Redis, prefix: str = "gc:") -> None:
        self.r = redis
        self.prefix = prefix
        self._transition = redis.register_script(_TRANSITION_LUA)
        self._update_if_running = redis.register_script(_UPDATE_IF_RUNNING_LUA)
        self._delete = redis.register_script(_DELETE_LUA)

    def key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    # --- create / read ----------------------------------------------------------------------
    def create(
        self,
        *,
        owner: str,
        model_id: str,
        model_format: str,
        spec: dict[str, Any],
        calibration: dict[str, str] | None = None,
        job_id: str | None = None,
    ) -> JobRecord:
        job_id = job_id or new_job_id()
        seq = int(self.r.incr(f"{self.prefix}seq"))
        rec = JobRecord(
            id=job_id,
            owner=owner,
            state=JobState.QUEUED,
            created_at=time.time(),
            model_id=model_id,
            model_format=model_format,
            calibration=calibration or {},
            spec=spec,
            seq=seq,
        )
        fields = rec.model_dump(exclude={"error", "summary", "started_at", "finished_at", "heartbeat"})
        flat = _encode(fields)
        with self.r.pipeline(transaction=True) as p:
            p.hset(self.key(job_id), mapping=dict(zip(flat[::2], flat[1::2], strict=True)))
            p.zadd(f"{self.prefix}jobs:all:{owner}", {job_id: seq})
            p.zadd(f"{self.prefix}jobs:{JobState.QUEUED}:{owner}", {job_id: seq})
            p.zadd(f"{self.prefix}state:{JobState.QUEUED}", {job_id: seq})
            p.execute()
        log.info("job.created job_id=%s owner=%s", job_id, owner)
        return rec

    def get(self, job_id: str) -> JobRecord | None:
        raw = cast(dict[str, str], self.r.hgetall(self.key(job_id)))  # decode_responses: str
        return _decode(raw) if raw else None

    async def aget(self, ar: AsyncRedis, job_id: str) -> JobRecord | None:
        """``get`` on the event loop, with an asyncio client of the same Redis."""
        raw = cast(dict[str, str], await ar.hgetall(self.key(job_id)))
        return _decode(raw) if raw else None

    def get_many(self, ids: Iterable[str]) -> list[JobRecord]:
        with self.r.pipeline(transaction=False) as p:
            for i in ids:
                p.hgetall(self.key(i))
            return [_decode(raw) for raw in p.execute() if raw]

    # --- state machine ----------------------------------------------------------------------
    def transition(
        self,
        job_id: str,
        to: JobState,
        *,
        expected: JobState | Iterable[JobState] | None = None,
        **fields: Any,
    ) -> bool:
        """Compare-and-set the state to ``to`` (with ``fields``) if the job is in ``expected``
        (default: every state that may go to ``to``). Returns whether it applied."""
        if expected is None:
            sources = [s for s in JobState if allowed(s, to)]
        else:
            sources = [expected] if isinstance(expected, JobState) else list(expected)
        for s in sources:
            if not allowed(s, to):
                raise InvalidTransitionError(f"a job cannot go from {s} to {to}")
        if to in TERMINAL:
            fields.setdefault("finished_at", time.time())
        ok, prev = self._transition(
            keys=[self.key(job_id)], args=[self.prefix, str(to), ",".join(sources), *_encode(fields)]
        )
        if ok:
            log.info("job.transition job_id=%s from=%s to=%s", job_id, prev, to)
        return bool(ok)

    def update_running(self, job_id: str, **fields: Any) -> bool:
        """Set fields (progress, stage, heartbeat...) only while the job is running."""
        return bool(self._update_if_running(keys=[self.key(job_id)], args=_encode(fields)))

    def request_cancel(self, job_id: str, stale_after: float) -> JobRecord | None:
        """Cancel a job: a queued one at once, a running one by flagging it for its worker (or at
        once when its worker stopped sending heartbeats). Finished jobs are left as they are."""
        for _ in range(10):  # a queued job may start running between the read and the CAS
            rec = self.get(job_id)
            if rec is None or rec.finished:
                return rec
            detail = {"code": "canceled", "detail": "canceled by request"}
            if rec.state == JobState.QUEUED:
                if self.transition(job_id, JobState.CANCELED, expected=JobState.QUEUED, error=detail):
                    return self.get(job_id)
                continue
            hb = rec.heartbeat or rec.started_at or 0.0
            if time.time() - hb > stale_after:
                self.transition(job_id, JobState.CANCELED, expected=JobState.RUNNING, error=detail)
            else:
                self.update_running(job_id, cancel_requested=True)
            return self.get(job_id)
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        return self.r.hget(self.key(job_id), "cancel_requested") == "1"

    def delete(self, job_id: str) -> str:
        """Delete a finished job's record: returns ``"deleted"``, ``""`` (no such job) or the
        state of an unfinished job (which is kept)."""
        return str(self._delete(keys=[self.key(job_id)], args=[self.prefix]))

    # --- queries ----------------------------------------------------------------------------
    def list(
        self, owner: str, *, state: JobState | None = None, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[JobRecord], str | None]:
        """Newest first. Returns one page and the cursor of the next one (None at the end)."""
        key = f"{self.prefix}jobs:{state or 'all'}:{owner}"
        top = f"({decode_cursor(cursor)}" if cursor else "+inf"
        ids = cast("builtins.list[str]", self.r.zrevrangebyscore(key, top, "-inf", start=0, num=limit + 1))
        more = len(ids) > limit
        recs = self.get_many(ids[:limit])
        if state is not None:
            recs = [r for r in recs if r.state == state]
        nxt = encode_cursor(int(self.r.zscore(key, ids[limit - 1]) or 0)) if more else None
        return recs, nxt

    def count_by_state(self) -> dict[JobState, int]:
        with self.r.pipeline(transaction=False) as p:
            for s in JobState:
                p.zcard(f"{self.prefix}state:{s}")
            return dict(zip(JobState, (int(n) for n in p.execute()), strict=True))

    def stale_running(self, older_than: float) -> builtins.list[str]:
        """Ids of running jobs whose last heartbeat is older than ``older_than`` seconds."""
        ids = cast("builtins.list[str]", self.r.zrange(f"{self.prefix}state:{JobState.RUNNING}", 0, -1))
        now = time.time()
        return [r.id for r in self.get_many(ids) if now - (r.heartbeat or r.started_at or 0.0) > older_than]

    def fail_stale(self, older_than: float) -> builtins.list[str]:
        """Fail running jobs whose worker stopped sending heartbeats (it died or was killed)."""
        failed = []
        for job_id in self.stale_running(older_than):
            err = WorkerLostError("the worker running this job stopped (crashed or shut down)").to_dict()
            if self.transition(job_id, JobState.FAILED, expected=JobState.RUNNING, error=err):
                log.warning("job.worker_lost job_id=%s", job_id)
                failed.append(job_id)
        return failed


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex[:24]
