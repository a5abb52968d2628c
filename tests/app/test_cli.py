"""The CLI's parsing, gates and one-line errors (no server, no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import cli
from worker.errors import BadSpecError


@pytest.mark.parametrize(
    ("expr", "parsed"),
    [
        ("ssim<0.9", ("ssim", "<", 0.9)),
        (" speedup >= 2 ", ("speedup", ">=", 2.0)),
        ("psnr!=1e1", ("psnr", "!=", 10.0)),
    ],
)
def test_parse_fail_if(expr: str, parsed: tuple[str, str, float]) -> None:
    assert cli.parse_fail_if(expr) == parsed


@pytest.mark.parametrize("expr", ["ssim", "ssim<<1", "<0.9", "ssim<abc", "ssim = 1"])
def test_bad_fail_if(expr: str) -> None:
    with pytest.raises(BadSpecError):
        cli.parse_fail_if(expr)


def test_check_fail_if_and_exit_code() -> None:
    summary = {"ssim": 0.95, "speedup": 1.5, "gates_passed": True}
    rows = cli.check_fail_if(["ssim<0.9", "speedup<2"], summary)
    assert [r[1].split()[0] for r in rows] == ["pass", "FAIL"]
    assert cli.gate_exit(summary, rows) == cli.EXIT_GATE
    assert cli.gate_exit(summary, rows[:1]) == cli.EXIT_OK
    assert cli.gate_exit({**summary, "gates_passed": False}, []) == cli.EXIT_GATE
    with pytest.raises(BadSpecError, match="has no metric 'lpips'"):
        cli.check_fail_if(["lpips<0.1"], summary)


def test_fail_if_on_the_target_search() -> None:
    """A missed target fails the build only when asked (--fail-if 'target_met==0'); without a
    target the summary's target_met is null, and saying so beats a silent pass."""
    missed = {"ssim": 0.93, "gates_passed": True, "target_met": False, "target_misses": ["ssim 0.93 < 0.95"]}
    rows = cli.check_fail_if(["target_met==0"], missed)
    assert rows[0][1].startswith("FAIL") and cli.gate_exit(missed, rows) == cli.EXIT_GATE
    assert cli.gate_exit(missed, []) == cli.EXIT_OK
    met = {**missed, "target_met": True, "target_misses": []}
    assert cli.gate_exit(met, cli.check_fail_if(["target_met==0"], met)) == cli.EXIT_OK
    with pytest.raises(BadSpecError, match="only when the spec has a target"):
        cli.check_fail_if(["target_met==0"], {**missed, "target_met": None})


def test_compress_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["compress", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gancompress: error: bad_input: model file not found: {tmp_path / 'missing.onnx'}"]
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    assert cli.main(["compress", str(model), "--out", str(tmp_path / "o"), "--ratio", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gancompress: error: invalid_spec: prune.ratio")
    assert cli.main(["compress", str(model), "--out", str(tmp_path / "o"), "--calibration", "nope.npy"]) == 2
    assert "calibration file not found" in capsys.readouterr().err


def test_submit_unreachable_server_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    from tests.conftest import free_port

    argv = ["submit", str(model), "--server", f"http://127.0.0.1:{free_port()}", "--wait", "--quiet"]
    import app.client

    orig = app.client.GanCompressClient.__init__

    def fast(self: app.client.GanCompressClient, *a: object, **kw: object) -> None:
        orig(self, *a, **{**kw, "retries": 0})  # type: ignore[arg-type]

    monkeypatch.setattr(app.client.GanCompressClient, "__init__", fast)
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip().startswith("gancompress: error: connection_failed: cannot reach")


def test_summary_table(capsys: pytest.CaptureFixture[str]) -> None:
    gates = {
        "passed": False,
        "results": [{"gate": "min_ssim", "threshold": 0.99, "value": 0.9, "passed": False}],
    }
    cli.print_summary({"ssim": 0.9, "psnr": 30.0, "gates_passed": False, "gates": gates}, [("job", "job_1")])
    out = capsys.readouterr().out
    assert "ssim" in out and "0.9" in out and "FAIL" in out and "NO" in out and "job_1" in out
