"""The HTTP API in-process over a real Redis (no worker): uploads, submit, read, list, cancel,
artifacts, delete, auth scoping, and the problem+json shape of every error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.files import image_zip, npy_bytes, onnx_bytes, torchscript_zip
from worker.core.jobs import JobState
from worker.core.settings import Settings

SPEC = {"distill": {"steps": 5, "budget_seconds": 5}}
TS_SPEC = {"inputs": {"z": {"shape": [1, 8]}}, **SPEC}
IMAGE_MODEL = onnx_bytes(shape=(1, 8, 4, 4))  # a float rank-4 input: an image input by default


def assert_problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["code"] == code
    assert body["type"] == f"urn:gancompress:error:{code}"
    assert body["title"] and isinstance(body["detail"], str) and body["detail"]
    return body


def upload(client: TestClient, data: bytes, name: str = "m.bin", **kw: Any) -> Any:
    return client.post("/v1/models", files={"file": (name, data)}, **kw)


def onnx_model(client: TestClient, **kw: Any) -> dict[str, Any]:
    r = upload(client, onnx_bytes(), "g.onnx", **kw)
    assert r.status_code == 201, r.text
    return r.json()


# --- uploads -----------------------------------------------------------------------------------


def test_upload_onnx_reports_inputs_and_dedups(client: TestClient) -> None:
    a = onnx_model(client)
    assert a["format"] == "onnx" and a["bytes"] == len(onnx_bytes())
    assert a["inputs"] == [{"name": "z", "shape": [1, 8], "dtype": "float32", "distribution": "normal"}]
    b = client.post("/v1/models", content=onnx_bytes(), headers={"content-type": "application/octet-stream"})
    assert b.status_code == 201 and b.json()["id"] == a["id"] and b.json()["sha256"] == a["sha256"]
    assert client.get(f"/v1/models/{a['id']}").json()["sha256"] == a["sha256"]


def test_format_from_content_not_name(client: TestClient) -> None:
    r = upload(client, torchscript_zip(), "model.onnx")
    assert r.status_code == 201 and r.json()["format"] == "torchscript" and r.json()["inputs"] is None
    r = upload(client, onnx_bytes(), "model.pt")
    assert r.json()["format"] == "onnx"


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"\x00garbage" * 100, 415, "unsupported_format"),
        (b"hello world, not a model", 415, "unsupported_format"),
        (torchscript_zip(layout="checkpoint"), 415, "unsupported_format"),
        (torchscript_zip()[:300], 422, "corrupt_model"),
        (onnx_bytes()[: len(onnx_bytes()) // 2], 422, "corrupt_model"),
        (onnx_bytes(external=True), 422, "external_data"),
    ],
    ids=["garbage", "text", "torch-save", "truncated-zip", "truncated-onnx", "external-data"],
)
def test_bad_models_are_4xx_never_jobs(client: TestClient, data: bytes, status: int, code: str) -> None:
    assert_problem(upload(client, data), status, code)
    r = client.post("/v1/jobs", files={"model": ("m", data)}, data={"spec": json.dumps(TS_SPEC)})
    assert_problem(r, status, code)
    assert client.get("/v1/jobs").json()["items"] == []


def test_empty_and_malformed_uploads(client: TestClient) -> None:
    assert_problem(upload(client, b""), 400, "malformed_upload")
    r = client.post(
        "/v1/models",
        content=b"--xx\r\nnot a part",
        headers={"content-type": "multipart/form-data; boundary=xx"},
    )
    assert r.status_code == 400 and r.json()["code"] in ("malformed_upload", "bad_request")
    r = client.post("/v1/models", content=b"abc", headers={"content-type": "multipart/form-data"})
    assert_problem(r, 400, "malformed_upload")
    r = client.post("/v1/models", files={"file": ("a", b"x"), "other": ("b", b"y")})
    assert_problem(r, 400, "malformed_upload")


def test_upload_size_limit_413(settings: Settings) -> None:
    settings.max_upload_bytes = 1000
    with TestClient(create_app(settings)) as c:
        assert_problem(upload(c, onnx_bytes()), 413, "payload_too_large")
        r = c.post("/v1/models", content=b"x" * 5000, headers={"content-type": "application/octet-stream"})
        assert_problem(r, 413, "payload_too_large")
        r = c.post("/v1/jobs", files={"model": ("g.onnx", onnx_bytes())}, data={"spec": "{}"})
        assert_problem(r, 413, "payload_too_large")
        big = {"model_id": "mdl_x", "spec": {"prune": {"ignore": ["x" * 100] * 20_000}}}
        assert_problem(c.post("/v1/jobs", json=big), 413, "payload_too_large")
        assert c.get("/v1/jobs").json()["items"] == []
    staging = settings.tmp_dir
    assert staging is not None and not any(staging.glob("upload-*")), "rejected uploads leave nothing"


def test_queue_down_is_503_and_the_job_is_failed(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = client.app.state.services  # type: ignore[attr-defined]

    def broken(job_id: str, budget: float) -> None:
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(svc.queue, "enqueue", broken)
    m = onnx_model(client)
    body = assert_problem(
        client.post("/v1/jobs", json={"model_id": m["id"], "spec": SPEC}), 503, "service_unavailable"
    )
    assert "retry" in body["detail"]
    (job,) = client.get("/v1/jobs").json()["items"]
    assert job["state"] == "failed" and job["error"]["code"] == "enqueue_failed"


@pytest.mark.parametrize(
    ("data", "fmt"),
    [(npy_bytes(), "npy"), (image_zip(), "zip")],
)
def test_calibration_upload(client: TestClient, data: bytes, fmt: str) -> None:
    r = client.post("/v1/calibrations", files={"file": ("c", data)})
    assert r.status_code == 201, r.text
    assert r.json()["format"] == fmt
    assert client.get(f"/v1/calibrations/{r.json()['id']}").status_code == 200


@pytest.mark.parametrize(
    "data",
    [npy_bytes((4, 8)), npy_bytes((4, 3, 8, 8), "complex64"), b"not an array", torchscript_zip()],
    ids=["2d", "complex", "garbage", "zip-without-images"],
)
def test_bad_calibration_422(client: TestClient, data: bytes) -> None:
    assert_problem(client.post("/v1/calibrations", files={"file": ("c", data)}), 422, "bad_calibration")


# --- submit ------------------------------------------------------------------------------------


def test_submit_json_202_location_retry_after(client: TestClient) -> None:
    m = onnx_model(client)
    r = client.post("/v1/jobs", json={"model_id": m["id"], "spec": SPEC})
    assert r.status_code == 202
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}" and int(r.headers["retry-after"]) >= 1
    assert job["state"] == "queued" and job["progress"]["fraction"] == 0.0 and job["artifacts"] == {}
    assert job["spec"]["distill"]["steps"] == 5 and job["spec"]["prune"]["method"] == "channel"
    assert "error" not in job and "summary" not in job


def test_submit_multipart_with_calibration(client: TestClient) -> None:
    spec = {"inputs": {"z": {"shape": [1, 8, 4, 4], "distribution": "calibration"}}, **SPEC}
    r = client.post(
        "/v1/jobs",
        files={"model": ("g.onnx", IMAGE_MODEL), "calibration": ("c.npy", npy_bytes((4, 8, 4, 4)))},
        data={"spec": json.dumps(spec)},
    )
    assert r.status_code == 202, r.text
    assert list(r.json()["calibration"]) == [""]
    r = client.post(
        "/v1/jobs",
        files={"model": ("g.onnx", IMAGE_MODEL), "calibration.z": ("c.npy", npy_bytes((4, 8, 4, 4)))},
        data={"spec": json.dumps(spec)},
    )
    assert r.status_code == 202 and list(r.json()["calibration"]) == ["z"]


def test_image_inputs_follow_the_engine_defaults(client: TestClient) -> None:
    """Without an input spec a float rank-4 ONNX input is an image input: calibration needed."""
    m = client.post("/v1/models", files={"file": ("i.onnx", IMAGE_MODEL)}).json()
    assert m["inputs"][0]["distribution"] == "calibration"
    body = assert_problem(
        client.post("/v1/jobs", json={"model_id": m["id"], "spec": SPEC}), 422, "bad_calibration"
    )
    assert "image input" in body["detail"]
    cal = client.post("/v1/calibrations", files={"file": ("c.npy", npy_bytes((4, 8, 4, 4)))}).json()
    r = client.post("/v1/jobs", json={"model_id": m["id"], "calibration_id": cal["id"], "spec": SPEC})
    assert r.status_code == 202, r.text
    # ...unless the spec samples it.
    spec = {**SPEC, "inputs": {"z": {"shape": [1, 8, 4, 4], "distribution": "normal"}}}
    assert client.post("/v1/jobs", json={"model_id": m["id"], "spec": spec}).status_code == 202
    r = client.post("/v1/jobs", json={"model_id": m["id"], "calibration_id": cal["id"], "spec": spec})
    assert_problem(r, 422, "bad_calibration")
    # A latent model given calibration images it cannot use.
    latent = onnx_model(client)
    r = client.post("/v1/jobs", json={"model_id": latent["id"], "calibration_id": cal["id"], "spec": SPEC})
    assert_problem(r, 422, "bad_calibration")


def test_integer_input_without_embedding_needs_a_spec(client: TestClient) -> None:
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Cast", ["label"], ["img"], to=TensorProto.FLOAT)], "g",
        [helper.make_tensor_value_info("label", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    m = upload(
        client, helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    ).json()
    assert m["inputs"][0]["distribution"] is None
    assert_problem(client.post("/v1/jobs", json={"model_id": m["id"]}), 422, "missing_input_spec")
    spec = {"inputs": {"label": {"shape": [1], "dtype": "int64", "distribution": "randint", "high": 10}}}
    assert client.post("/v1/jobs", json={"model_id": m["id"], "spec": spec}).status_code == 202


@pytest.mark.parametrize(
    ("spec", "code"),
    [
        ({"prune": {"ratio": 1.5}}, "invalid_spec"),
        ({"prune": {"method": "magic"}}, "invalid_spec"),
        ({"distill": {"losses": {"nope": 1}}}, "invalid_spec"),
        ({"unknown": 1}, "invalid_spec"),
        ({"distill": {"budget_seconds": 10**6}}, "invalid_spec"),
        ({"inputs": {"x": {"shape": [1, 8]}}}, "missing_input_spec"),
        ({"inputs": {"z": {"shape": [1, 8, 4, 4], "distribution": "calibration"}}}, "bad_calibration"),
    ],
)
def test_invalid_spec_is_422_at_submit(client: TestClient, spec: dict[str, Any], code: str) -> None:
    m = onnx_model(client)
    assert_problem(client.post("/v1/jobs", json={"model_id": m["id"], "spec": spec}), 422, code)
    r = client.post("/v1/jobs", files={"model": ("g", onnx_bytes())}, data={"spec": json.dumps(spec)})
    assert_problem(r, 422, code)
    assert client.get("/v1/jobs").json()["items"] == []


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"gates": {"min_psnr": Infinity}}', "Infinity"),
        ('{"gates": {"min_ssim": NaN}}', "NaN"),
        ('{"prune": {"ratio": -Infinity}}', "Infinity"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
    ids=["infinity-gate", "nan-gate", "minus-infinity", "deep-nesting"],
)
def test_json_a_spec_cannot_hold_is_422_not_null_or_500(client: TestClient, text: str, needle: str) -> None:
    r = client.post("/v1/jobs", files={"model": ("g", onnx_bytes())}, data={"spec": text})
    assert needle in assert_problem(r, 422, "invalid_spec")["detail"]
    m = onnx_model(client)  # the JSON body: pydantic parses the constants, the spec refuses them
    if not text.startswith("["):
        body = '{"model_id": "%s", "spec": %s}' % (m["id"], text)  # noqa: UP031
        r = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
        assert_problem(r, 422, "invalid_spec")
    assert client.get("/v1/jobs").json()["items"] == []


def test_an_input_too_large_to_sample_is_422_at_submit(client: TestClient) -> None:
    import onnx

    model = onnx.load_from_string(onnx_bytes(shape=("N", 8)))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 100_000_000  # z: [N, 100000000]
    huge = model.SerializeToString()
    r = client.post("/v1/jobs", files={"model": ("g", huge)}, data={"spec": json.dumps(SPEC)})
    assert "100000000" in assert_problem(r, 422, "missing_input_spec")["detail"]
    assert client.get("/v1/jobs").json()["items"] == []


def test_external_data_in_a_model_local_function_is_refused(client: TestClient) -> None:
    import onnx
    from onnx import helper

    model = onnx.load_from_string(onnx_bytes())
    w = onnx.load_from_string(onnx_bytes(external=True)).graph.initializer[0]
    const = helper.make_node("Constant", [], ["c"], value=w)
    model.functions.append(
        helper.make_function("local", "f", [], ["c"], [const], [helper.make_opsetid("", 17)])
    )
    r = upload(client, model.SerializeToString())
    assert_problem(r, 422, "external_data")


def test_submit_errors(client: TestClient) -> None:
    ts = upload(client, torchscript_zip()).json()
    assert_problem(client.post("/v1/jobs", json={"model_id": ts["id"]}), 422, "missing_input_spec")
    assert_problem(client.post("/v1/jobs", json={"model_id": "mdl_nope"}), 404, "model_not_found")
    m = onnx_model(client)
    r = client.post("/v1/jobs", json={"model_id": m["id"], "calibration_id": "cal_nope"})
    assert_problem(r, 404, "calibration_not_found")
    assert_problem(client.post("/v1/jobs", json={"spec": {}}), 422, "validation_error")
    assert_problem(client.post("/v1/jobs", content=b"{", headers={"content-type": "application/json"}), 422,
                   "validation_error")  # fmt: skip
    r = client.post("/v1/jobs", files={"model": ("g", onnx_bytes())}, data={"spec": "{not json"})
    assert_problem(r, 422, "invalid_spec")
    assert_problem(
        client.post("/v1/jobs", data={"spec": "{}"}, files={"x.y": ("a", b"1")}), 400, "malformed_upload"
    )
    assert_problem(client.post("/v1/jobs", content=b"x", headers={"content-type": "text/plain"}), 415,
                   "unsupported_media_type")  # fmt: skip


def test_idempotency_key(client: TestClient) -> None:
    m = onnx_model(client)
    h = {"Idempotency-Key": "build-42"}
    a = client.post("/v1/jobs", json={"model_id": m["id"], "spec": SPEC}, headers=h)
    b = client.post("/v1/jobs", json={"model_id": m["id"], "spec": SPEC}, headers=h)
    assert a.status_code == b.status_code == 202 and a.json()["id"] == b.json()["id"]
    assert b.headers.get("idempotent-replayed") == "true"
    # The same key in a multipart retry with the same bytes is the same request.
    c = client.post(
        "/v1/jobs", files={"model": ("g", onnx_bytes())}, data={"spec": json.dumps(SPEC)}, headers=h
    )
    assert c.json()["id"] == a.json()["id"]
    other = {"distill": {"steps": 6, "budget_seconds": 5}}
    r = client.post("/v1/jobs", json={"model_id": m["id"], "spec": other}, headers=h)
    assert_problem(r, 409, "idempotency_conflict")
    assert len(client.get("/v1/jobs").json()["items"]) == 1


# --- read / list / cancel / delete -------------------------------------------------------------


def _job(client: TestClient) -> dict[str, Any]:
    m = onnx_model(client)
    return client.post("/v1/jobs", json={"model_id": m["id"], "spec": SPEC}).json()


def test_etag_304(client: TestClient) -> None:
    job = _job(client)
    r = client.get(f"/v1/jobs/{job['id']}")
    etag = r.headers["etag"]
    assert r.status_code == 200 and etag.startswith('"')
    r2 = client.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": etag})
    assert r2.status_code == 304 and r2.content == b"" and r2.headers["etag"] == etag
    assert client.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": f"W/{etag}"}).status_code == 304
    svc = client.app.state.services  # type: ignore[attr-defined]
    svc.jobs.transition(job["id"], JobState.RUNNING)
    svc.jobs.update_running(job["id"], stage="distill", progress={"fraction": 0.5, "step": 5, "total": 10})
    r3 = client.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": etag})
    assert r3.status_code == 200 and r3.headers["etag"] != etag
    assert r3.json()["stage"] == "distill" and r3.json()["progress"]["step"] == 5
    assert r3.json()["progress"]["candidates"] is None  # only a target search has a live front
    front = [{"id": "c1", "level": 0.5, "quantize": "none", "macs": 10, "size_bytes": 4, "latency_ms": 1.5}]
    svc.jobs.update_running(job["id"], stage="search", progress={"fraction": 0.2, "candidates": front})
    assert client.get(f"/v1/jobs/{job['id']}").json()["progress"]["candidates"] == front


def test_list_pagination_and_filter(client: TestClient) -> None:
    m = onnx_model(client)
    ids = [client.post("/v1/jobs", json={"model_id": m["id"], "spec": SPEC}).json()["id"] for _ in range(5)]
    client.post(f"/v1/jobs/{ids[2]}:cancel")
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = client.get("/v1/jobs", params=params)
        body = r.json()
        seen += [j["id"] for j in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
        assert 'rel="next"' in r.headers["link"]
    assert seen == ids[::-1]
    canceled = client.get("/v1/jobs", params={"state": "canceled"}).json()["items"]
    assert [j["id"] for j in canceled] == [ids[2]]
    assert_problem(client.get("/v1/jobs", params={"state": "bogus"}), 422, "validation_error")
    assert_problem(client.get("/v1/jobs", params={"cursor": "???"}), 400, "invalid_cursor")
    assert_problem(client.get("/v1/jobs", params={"limit": 0}), 422, "validation_error")


def test_cancel_is_idempotent(client: TestClient) -> None:
    job = _job(client)
    a = client.post(f"/v1/jobs/{job['id']}:cancel")
    b = client.post(f"/v1/jobs/{job['id']}:cancel")
    assert a.status_code == b.status_code == 200
    assert a.json()["state"] == b.json()["state"] == "canceled"
    assert a.json()["error"]["code"] == "canceled"


def test_cancel_running_is_202_then_finished_409(client: TestClient) -> None:
    job = _job(client)
    svc = client.app.state.services  # type: ignore[attr-defined]
    svc.jobs.transition(job["id"], JobState.RUNNING, heartbeat=__import__("time").time())
    r = client.post(f"/v1/jobs/{job['id']}:cancel")
    assert r.status_code == 202 and r.json()["state"] == "running" and r.json()["cancel_requested"]
    svc.jobs.transition(job["id"], JobState.SUCCEEDED)
    assert_problem(client.post(f"/v1/jobs/{job['id']}:cancel"), 409, "job_finished")


def test_artifacts_and_delete(client: TestClient, settings: Settings, tmp_path: Any) -> None:
    job = _job(client)
    svc = client.app.state.services  # type: ignore[attr-defined]
    assert_problem(client.delete(f"/v1/jobs/{job['id']}"), 409, "job_not_finished")
    f = tmp_path / "r.json"
    f.write_text('{"summary": {}}')
    svc.store.put_file(f"jobs/{job['id']}/report.json", f)
    svc.jobs.transition(job["id"], JobState.RUNNING)
    svc.jobs.transition(job["id"], JobState.SUCCEEDED, summary={"ssim": 0.95}, artifacts=["report.json"])
    body = client.get(f"/v1/jobs/{job['id']}").json()
    assert body["summary"] == {"ssim": 0.95}
    url = body["artifacts"]["report.json"]
    assert url.endswith(f"/v1/jobs/{job['id']}/artifacts/report.json")
    r = client.get(url)
    assert (
        r.status_code == 200
        and r.json() == {"summary": {}}
        and r.headers["content-type"] == "application/json"
    )
    assert_problem(client.get(f"/v1/jobs/{job['id']}/artifacts/model.onnx"), 404, "artifact_not_found")
    assert client.get(f"/v1/jobs/{job['id']}/artifacts/..%2F..%2Fsecret").status_code == 404
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert_problem(client.get(f"/v1/jobs/{job['id']}"), 404, "job_not_found")
    assert not svc.store.exists(f"jobs/{job['id']}/report.json")
    assert_problem(client.delete(f"/v1/jobs/{job['id']}"), 404, "job_not_found")


def test_unknown_route_and_method(client: TestClient) -> None:
    assert_problem(client.get("/v2/nothing"), 404, "not_found")
    assert_problem(client.put("/v1/jobs"), 405, "method_not_allowed")
    assert_problem(client.get("/v1/jobs/job_nope"), 404, "job_not_found")


# --- auth --------------------------------------------------------------------------------------


def test_auth_scoping(settings: Settings) -> None:
    settings.api_keys = "alice:key-a,bob:key-b"
    with TestClient(create_app(settings)) as c:
        a = {"Authorization": "Bearer key-a"}
        b = {"Authorization": "Bearer key-b"}
        body = assert_problem(c.get("/v1/jobs"), 401, "unauthorized")
        assert "Bearer" in c.get("/v1/jobs").headers["www-authenticate"] and body["detail"]
        assert_problem(c.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        assert_problem(c.get("/v1/jobs", headers={"Authorization": "Basic a2V5LWE="}), 401, "unauthorized")
        assert_problem(upload(c, onnx_bytes()), 401, "unauthorized")
        m = onnx_model(c, headers=a)
        job = c.post("/v1/jobs", json={"model_id": m["id"], "spec": SPEC}, headers=a).json()
        # Bob sees none of Alice's things, even with the ids, and the same bytes give him his own model.
        assert_problem(c.get(f"/v1/jobs/{job['id']}", headers=b), 404, "job_not_found")
        assert_problem(c.post(f"/v1/jobs/{job['id']}:cancel", headers=b), 404, "job_not_found")
        assert_problem(c.delete(f"/v1/jobs/{job['id']}", headers=b), 404, "job_not_found")
        assert_problem(c.get(f"/v1/jobs/{job['id']}/artifacts/log.txt", headers=b), 404, "job_not_found")
        assert_problem(c.get(f"/v1/models/{m['id']}", headers=b), 404, "model_not_found")
        r = c.post("/v1/jobs", json={"model_id": m["id"], "spec": SPEC}, headers=b)
        assert_problem(r, 404, "model_not_found")
        assert c.get("/v1/jobs", headers=b).json()["items"] == []
        cal = c.post("/v1/calibrations", files={"file": ("c.npy", npy_bytes())}, headers=a).json()
        assert_problem(c.get(f"/v1/calibrations/{cal['id']}", headers=b), 404, "calibration_not_found")
        mb = onnx_model(c, headers=b)
        r = c.post("/v1/jobs", json={"model_id": mb["id"], "calibration_id": cal["id"]}, headers=b)
        assert_problem(r, 404, "calibration_not_found")
        assert [j["id"] for j in c.get("/v1/jobs", headers=a).json()["items"]] == [job["id"]]
        # Health, metrics and the catalog stay open.
        assert c.get("/healthz").json()["auth"] is True
        assert c.get("/metrics").status_code == 200 and c.get("/v1/catalog").status_code == 200


def test_key_owners_do_not_depend_on_position(settings: Settings) -> None:
    """Removing a bare key must not hand its jobs to the key listed after it."""
    settings.api_keys = "first-secret,second-secret"
    with TestClient(create_app(settings)) as c:
        second = {"Authorization": "Bearer second-secret"}
        m = onnx_model(c, headers=second)
        job = c.post("/v1/jobs", json={"model_id": m["id"], "spec": SPEC}, headers=second).json()
    settings.api_keys = "second-secret"  # the first key was removed: the second is still itself
    with TestClient(create_app(settings)) as c:
        assert c.get(f"/v1/jobs/{job['id']}", headers=second).status_code == 200
    settings.api_keys = "other-secret,second-secret"  # a new key in first place inherits nothing
    with TestClient(create_app(settings)) as c:
        assert_problem(
            c.get(f"/v1/jobs/{job['id']}", headers={"Authorization": "Bearer other-secret"}),
            404,
            "job_not_found",
        )


@pytest.mark.parametrize(
    "keys",
    ["team:a,team:b", "a:same,b:same", ":nokeyname"],
    ids=["one-name-two-keys", "key-twice", "empty-name"],
)
def test_ambiguous_keys_are_refused_at_start(settings: Settings, keys: str) -> None:
    settings.api_keys = keys
    with pytest.raises(ValueError, match="GANCOMPRESS_API_KEYS"):
        create_app(settings)


def test_no_keys_warns_at_start(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"), TestClient(create_app(settings)) as c:
        assert c.get("/healthz").json() == {"status": "ok", "auth": False, "isolation": {}}
    assert any("auth.disabled" in r.getMessage() for r in caplog.records)


def test_healthz_shows_how_each_live_worker_isolates_torchscript(settings: Settings, redis: Any) -> None:
    from worker.celery_app import publish_isolation
    from worker.core.celery_config import ISOLATION_KEY
    from worker.engine.convert import isolation

    publish_isolation(redis, settings.redis_prefix, "celery@live")
    gone = {"converter": "process", "isolated": False, "detail": "x", "seen_at": 0}
    redis.hset(f"{settings.redis_prefix}{ISOLATION_KEY}", "celery@gone", json.dumps(gone))
    with TestClient(create_app(settings)) as c:
        body = c.get("/healthz").json()
    assert body["isolation"] == {"celery@live": isolation()}  # a worker not seen for minutes is left out
    assert body["isolation"]["celery@live"]["isolated"] is True  # bubblewrap works on this host


# --- catalog / metrics / health ----------------------------------------------------------------


def test_catalog_lists_every_enum_member(client: TestClient) -> None:
    from worker.spec import Criterion, LossName, MetricName, PruneMethod, Quantize

    cat = client.get("/v1/catalog").json()
    for key, enum in (
        ("prune_methods", PruneMethod),
        ("criteria", Criterion),
        ("losses", LossName),
        ("metrics", MetricName),
        ("quantization", Quantize),
    ):
        assert {x["name"] for x in cat[key]} == {str(m) for m in enum}, key
        assert all(x["description"] for x in cat[key])
    channel = next(m for m in cat["prune_methods"] if m["name"] == "channel")
    assert {"ratio", "target_macs", "criterion"} <= set(channel["parameters"]["properties"])
    block = next(m for m in cat["prune_methods"] if m["name"] == "block")
    assert set(block["parameters"]["properties"]) == {"ratio", "blocks"}
    from worker.core.catalog import METRICS

    for m in cat["metrics"]:  # generated from the shared catalogue metadata, unit included
        info = METRICS[MetricName(m["name"])]
        assert m["description"].startswith(info.description) and info.unit in m["description"]
        assert m["higher_is_better"] is info.higher_is_better
    ms_ssim = next(m for m in cat["metrics"] if m["name"] == "ms_ssim")
    assert "(0..1)" in ms_ssim["description"] and ms_ssim["gate"] is None
    assert channel["parameters"]["properties"]["ratio"]["anyOf"][0]["exclusiveMaximum"] == 1.0
    assert "properties" in cat["spec"] and "prune" in cat["spec"]["properties"]


def test_metrics(client: TestClient) -> None:
    job = _job(client)
    client.post(f"/v1/jobs/{job['id']}:cancel")
    from worker.core.stage_metrics import record_stage_duration

    svc = client.app.state.services  # type: ignore[attr-defined]
    record_stage_duration(svc.redis, svc.settings.redis_prefix, "distill", 3.0)
    text = client.get("/metrics").text
    assert 'gancompress_jobs{state="canceled"} 1.0' in text
    assert 'gancompress_jobs{state="queued"} 0.0' in text
    assert "gancompress_queue_depth 1.0" in text  # the canceled job's message is still queued
    assert 'gancompress_stage_duration_seconds_bucket{le="5.0",stage="distill"} 1.0' in text
    assert 'gancompress_stage_duration_seconds_bucket{le="2.5",stage="distill"} 0.0' in text
    assert (
        'gancompress_http_request_duration_seconds_count{method="POST",route="/v1/jobs",status="202"}' in text
    )


def test_readyz_without_worker_is_503(client: TestClient) -> None:
    body = assert_problem(client.get("/readyz"), 503, "not_ready")
    assert body["redis"] is True and body["workers"] == [] and "workers_error" not in body


def test_readyz_says_why_the_ping_could_not_be_sent(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker transport that cannot load (a missing dependency of the API's install) is not
    "no worker answers": /readyz names the error."""
    control = client.app.state.services.queue.celery.control  # type: ignore[attr-defined]

    def ping(**_: object) -> None:
        raise ModuleNotFoundError("No module named 'packaging'")

    monkeypatch.setattr(control, "ping", ping)
    body = assert_problem(client.get("/readyz"), 503, "not_ready")
    assert (
        body["workers"] == [] and body["workers_error"] == "ModuleNotFoundError: No module named 'packaging'"
    )


def test_openapi_documents_the_api(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    for path in ("/v1/models", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}:cancel", "/v1/catalog"):
        assert path in doc["paths"], path
    assert "multipart/form-data" in doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


def test_a_stalled_redis_is_a_quick_503_with_retry_after(settings: Settings) -> None:
    """A Redis that accepts connections and never answers (paused, overloaded): 503 + Retry-After
    after the configured timeout, not a hung request or a 500."""
    import socket
    import time

    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(64)  # connections complete in the backlog; nothing is ever read or answered
    settings.redis_url = f"redis://127.0.0.1:{stalled.getsockname()[1]}/0"
    settings.redis_timeout_seconds = 0.5
    try:
        with TestClient(create_app(settings)) as c:
            for call in (
                lambda: c.get("/v1/jobs/job_x"),
                lambda: c.post("/v1/jobs", json={"model_id": "mdl_x"}),
            ):
                t0 = time.monotonic()
                r = call()
                assert time.monotonic() - t0 < 5.0
                assert "Redis" in assert_problem(r, 503, "service_unavailable")["detail"]
                assert r.headers["retry-after"].isdigit()
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["redis"] is False and ready.json()["redis_error"]
    finally:
        stalled.close()
