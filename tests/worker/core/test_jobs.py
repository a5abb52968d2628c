"""The job state machine over a real Redis: every transition, CAS under races, listing."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
from redis import Redis

from worker.core.jobs import TERMINAL, TRANSITIONS, InvalidTransitionError, JobState, JobStore, allowed
from worker.errors import InvalidCursorError

ALL = list(JobState)


@pytest.fixture
def jobs(redis: Redis, prefix: str) -> JobStore:
    return JobStore(redis, prefix)


def _new(jobs: JobStore, owner: str = "alice") -> str:
    return jobs.create(owner=owner, model_id="mdl_x", model_format="onnx", spec={}).id


def _put_in(jobs: JobStore, job_id: str, state: JobState) -> None:
    path = {
        JobState.QUEUED: [],
        JobState.RUNNING: [JobState.RUNNING],
        JobState.SUCCEEDED: [JobState.RUNNING, JobState.SUCCEEDED],
        JobState.FAILED: [JobState.FAILED],
        JobState.CANCELED: [JobState.CANCELED],
    }[state]
    for s in path:
        assert jobs.transition(job_id, s)


def test_transition_table_is_closed() -> None:
    assert set(TRANSITIONS) == set(JobState)
    assert all(not TRANSITIONS[s] for s in TERMINAL)
    assert TRANSITIONS[JobState.QUEUED] == {JobState.RUNNING, JobState.CANCELED, JobState.FAILED}
    assert TRANSITIONS[JobState.RUNNING] == {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED}


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(ALL, ALL)))
def test_every_transition(jobs: JobStore, src: JobState, dst: JobState) -> None:
    job_id = _new(jobs)
    _put_in(jobs, job_id, src)
    if allowed(src, dst):
        assert jobs.transition(job_id, dst, expected=src)
        assert jobs.get(job_id).state == dst
    else:
        with pytest.raises(InvalidTransitionError):
            jobs.transition(job_id, dst, expected=src)
        # Without naming the source, a forbidden move is simply refused by the CAS.
        assert not jobs.transition(job_id, dst)
        assert jobs.get(job_id).state == src


def test_cas_refuses_wrong_expected_state(jobs: JobStore) -> None:
    job_id = _new(jobs)
    assert not jobs.transition(job_id, JobState.SUCCEEDED, expected=JobState.RUNNING)
    assert jobs.get(job_id).state == JobState.QUEUED
    assert not jobs.transition("job_missing", JobState.RUNNING)


def test_terminal_sets_finished_at_and_fields(jobs: JobStore) -> None:
    job_id = _new(jobs)
    jobs.transition(job_id, JobState.RUNNING, started_at=123.0)
    jobs.transition(job_id, JobState.SUCCEEDED, summary={"ssim": 0.9}, artifacts=["model.onnx"])
    rec = jobs.get(job_id)
    assert rec.started_at == 123.0 and rec.finished_at and rec.finished
    assert rec.summary == {"ssim": 0.9} and rec.artifacts == ["model.onnx"]


def test_claim_races_exactly_one_winner(jobs: JobStore) -> None:
    """Redelivered messages racing to claim the same job: one runs it, the others skip."""
    job_id = _new(jobs)
    barrier = threading.Barrier(16)
    wins: list[bool] = []

    def claim() -> None:
        barrier.wait()
        wins.append(jobs.transition(job_id, JobState.RUNNING, expected=JobState.QUEUED))

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 15 + [True]


def test_cancel_vs_finish_race_one_outcome(jobs: JobStore) -> None:
    for _ in range(20):
        job_id = _new(jobs)
        jobs.transition(job_id, JobState.RUNNING)
        barrier = threading.Barrier(2)
        results: dict[str, bool] = {}

        def go(
            state: JobState, rid: str = job_id, b: threading.Barrier = barrier, res: dict[str, bool] = results
        ) -> None:
            b.wait()
            res[state] = jobs.transition(rid, state, expected=JobState.RUNNING)

        ts = [threading.Thread(target=go, args=(s,)) for s in (JobState.CANCELED, JobState.SUCCEEDED)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert sum(results.values()) == 1
        winner = next(s for s, ok in results.items() if ok)
        assert jobs.get(job_id).state == winner


def test_canceled_job_is_never_resurrected(jobs: JobStore) -> None:
    job_id = _new(jobs)
    jobs.request_cancel(job_id, stale_after=60)
    assert jobs.get(job_id).state == JobState.CANCELED
    assert not jobs.transition(job_id, JobState.RUNNING)
    assert not jobs.update_running(job_id, stage="distill")
    assert jobs.get(job_id).state == JobState.CANCELED


def test_progress_only_while_running(jobs: JobStore) -> None:
    job_id = _new(jobs)
    assert not jobs.update_running(job_id, stage="prune")
    jobs.transition(job_id, JobState.RUNNING)
    assert jobs.update_running(job_id, stage="prune", progress={"fraction": 0.5})
    assert jobs.get(job_id).progress == {"fraction": 0.5}


def test_cancel_running_sets_flag_then_stale_cancels(jobs: JobStore) -> None:
    job_id = _new(jobs)
    jobs.transition(job_id, JobState.RUNNING, heartbeat=time.time())
    rec = jobs.request_cancel(job_id, stale_after=60)
    assert rec.state == JobState.RUNNING and rec.cancel_requested and jobs.cancel_requested(job_id)
    jobs.update_running(job_id, heartbeat=time.time() - 1000)
    assert jobs.request_cancel(job_id, stale_after=60).state == JobState.CANCELED


def test_fail_stale(jobs: JobStore) -> None:
    fresh, stale = _new(jobs), _new(jobs)
    jobs.transition(fresh, JobState.RUNNING, heartbeat=time.time())
    jobs.transition(stale, JobState.RUNNING, heartbeat=time.time() - 500)
    assert jobs.fail_stale(60) == [stale]
    assert jobs.get(stale).error["code"] == "worker_lost"
    assert jobs.get(fresh).state == JobState.RUNNING


def test_list_newest_first_with_cursor_and_filter(jobs: JobStore) -> None:
    ids = [_new(jobs) for _ in range(7)]
    other = _new(jobs, owner="bob")
    jobs.transition(ids[1], JobState.CANCELED)
    jobs.transition(ids[4], JobState.CANCELED)
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = jobs.list("alice", limit=3, cursor=cursor)
        seen += [r.id for r in page]
        if cursor is None:
            break
    assert seen == ids[::-1] and other not in seen
    canceled, nxt = jobs.list("alice", state=JobState.CANCELED, limit=10)
    assert [r.id for r in canceled] == [ids[4], ids[1]] and nxt is None
    with pytest.raises(InvalidCursorError):
        jobs.list("alice", cursor="not-a-cursor")


def test_delete_only_finished(jobs: JobStore) -> None:
    job_id = _new(jobs)
    assert jobs.delete(job_id) == "queued"
    jobs.transition(job_id, JobState.CANCELED)
    assert jobs.delete(job_id) == "deleted"
    assert jobs.get(job_id) is None and jobs.delete(job_id) == ""
    assert jobs.count_by_state()[JobState.CANCELED] == 0
