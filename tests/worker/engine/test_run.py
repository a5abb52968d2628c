"""The sandbox entry point's error events: memory failures are resource_limit however wrapped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker.engine import pipeline, run
from worker.errors import UnsupportedOpError, out_of_memory

ALLOC = "[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: you tried to allocate 53687091200 bytes"


def _events(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def _job(tmp_path: Path) -> list[str]:
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"model": str(tmp_path / "m.pt"), "spec": {}}))
    return [str(job), str(tmp_path / "out")]


@pytest.mark.parametrize(
    "raise_",
    [
        lambda: (_ for _ in ()).throw(MemoryError()),
        lambda: (_ for _ in ()).throw(RuntimeError(ALLOC)),
    ],
    ids=["MemoryError", "torch-allocator"],
)
def test_a_memory_failure_wrapped_as_unsupported_op_is_resource_limit(
    raise_: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def compress(*_a: Any, **_k: Any) -> None:
        try:
            raise_()
        except Exception as e:  # what an importer does with any conversion failure
            raise UnsupportedOpError(f"TorchScript model could not be traced to ONNX: {e}") from e

    monkeypatch.setattr(pipeline, "compress", compress)
    monkeypatch.delenv(run.EVENT_FD_ENV, raising=False)
    monkeypatch.setattr(run, "_EVENTS", None)
    assert run.main(_job(tmp_path)) == 1
    (event,) = _events(capsys)
    assert event["event"] == "error" and event["code"] == "resource_limit"
    assert "out of memory" in event["detail"]


def test_other_errors_keep_their_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def compress(*_a: Any, **_k: Any) -> None:
        raise UnsupportedOpError("unsupported ONNX operator 'Foo'")

    monkeypatch.setattr(pipeline, "compress", compress)
    monkeypatch.delenv(run.EVENT_FD_ENV, raising=False)
    monkeypatch.setattr(run, "_EVENTS", None)
    assert run.main(_job(tmp_path)) == run.EXIT_BAD_INPUT
    assert _events(capsys) == [
        {"event": "error", "code": "unsupported_op", "detail": "unsupported ONNX operator 'Foo'"}
    ]


def test_out_of_memory_walks_the_chain() -> None:
    try:
        try:
            raise RuntimeError(ALLOC)
        except RuntimeError as inner:
            raise ValueError("conversion failed") from inner
    except ValueError as e:
        assert out_of_memory(e)
    assert not out_of_memory(ValueError("shape mismatch"))
