"""ArtifactStore: the local directory and S3 against a real S3-compatible server (moto's server mode
on a free port, spoken to over HTTP by boto3 — not an in-process mock)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from worker.core.settings import Settings
from worker.core.storage import ArtifactStore, LocalStore, S3Store, store_from_settings
from worker.errors import PayloadTooLargeError


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalStore(tmp_path / "root")
    return request.getfixturevalue("s3_store")


def _upload(store: ArtifactStore, data: bytes, key: str) -> str:
    w = store.new_upload(limit=10_000)
    for i in range(0, len(data), 7):
        w.write(data[i : i + 7])
    assert w.sha256 == hashlib.sha256(data).hexdigest() and w.size == len(data)
    store.commit_upload(w, key)
    assert not w.path.exists()
    return w.sha256


def test_roundtrip(store: ArtifactStore, tmp_path: Path) -> None:
    data = b"hello artifacts" * 50
    _upload(store, data, "uploads/models/abc")
    assert store.exists("uploads/models/abc") and store.size("uploads/models/abc") == len(data)
    assert b"".join(store.iter_bytes("uploads/models/abc")) == data
    dest = tmp_path / "copy"
    store.fetch("uploads/models/abc", dest)
    assert dest.read_bytes() == data
    # Committing the same content again is a no-op.
    _upload(store, data, "uploads/models/abc")
    assert store.size("uploads/models/abc") == len(data)
    store.ping()


def test_missing_and_delete_prefix(store: ArtifactStore, tmp_path: Path) -> None:
    assert not store.exists("jobs/j1/model.onnx") and store.size("jobs/j1/model.onnx") is None
    with pytest.raises(KeyError):
        store.fetch("jobs/j1/model.onnx", tmp_path / "x")
    with pytest.raises(KeyError):
        store.iter_bytes("jobs/j1/model.onnx")
    f = tmp_path / "a"
    f.write_bytes(b"1")
    for name in ("model.onnx", "report.json"):
        store.put_file(f"jobs/j1/{name}", f)
    store.put_file("jobs/j10/model.onnx", f)
    assert store.delete_prefix("jobs/j1/") == 2
    assert not store.exists("jobs/j1/report.json") and store.exists("jobs/j10/model.onnx")


def test_upload_limit_discards(store: ArtifactStore) -> None:
    w = store.new_upload(limit=10)
    w.write(b"12345")
    with pytest.raises(PayloadTooLargeError):
        w.write(b"123456")
    assert not w.path.exists()


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a"])
def test_keys_cannot_escape(key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid storage key"):
        LocalStore(tmp_path).exists(key)


def test_store_from_settings(tmp_path: Path) -> None:
    assert isinstance(store_from_settings(Settings(storage_url=str(tmp_path / "a"))), LocalStore)
    local = store_from_settings(Settings(storage_url=f"file://{tmp_path / 'b'}"))
    assert isinstance(local, LocalStore) and local.root == (tmp_path / "b").resolve()
    with pytest.raises(ValueError, match="scheme"):
        store_from_settings(Settings(storage_url="ftp://x/y"))


def test_api_against_s3(s3_store: S3Store, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Uploads and artifact downloads through the API with the S3 store."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.app.files import onnx_bytes
    from worker.core.jobs import JobState

    settings.storage_url = "s3://gc-bucket/api"
    settings.s3_endpoint_url = s3_store.client.meta.endpoint_url
    with TestClient(create_app(settings)) as c:
        m = c.post("/v1/models", files={"file": ("g.onnx", onnx_bytes())}).json()
        svc = c.app.state.services  # type: ignore[attr-defined]
        assert isinstance(svc.store, S3Store) and svc.store.exists(f"uploads/models/{m['sha256']}")
        job = c.post("/v1/jobs", json={"model_id": m["id"], "spec": {}}).json()
        svc.store.put_file(f"jobs/{job['id']}/log.txt", _text_file(settings.tmp_dir, "log line\n"))
        svc.jobs.transition(job["id"], JobState.RUNNING)
        svc.jobs.transition(
            job["id"], JobState.FAILED, error={"code": "x", "detail": "y"}, artifacts=["log.txt"]
        )
        r = c.get(f"/v1/jobs/{job['id']}/artifacts/log.txt")
        assert r.status_code == 200 and r.text == "log line\n" and r.headers["content-length"] == "9"
        assert c.get("/readyz").json()["storage"] is True


def _text_file(d: Path | None, text: str) -> Path:
    assert d is not None
    d.mkdir(parents=True, exist_ok=True)
    p = d / "t.txt"
    p.write_text(text)
    return p
