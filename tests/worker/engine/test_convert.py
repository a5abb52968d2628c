"""The TorchScript converter sandbox (worker/engine/convert.py): real hostile models, real bubblewrap.

Each attack is also run with the isolation switched off (a plain process, what the worker did
before), to show the model really does what the test says it does: the same test would fail
without the sandbox.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import worker
from worker.engine import convert
from worker.errors import CorruptModelError, ResourceLimitError, UnsupportedOpError

INPUTS = {"x": {"shape": [1, 3, 8, 8]}}


class Reader(nn.Module):
    """Reads ``path`` in ``forward`` and folds the bytes into its output (the export freezes them
    into the graph as a constant)."""

    def __init__(self, path: str, n: int) -> None:
        super().__init__()
        self.path, self.n = path, n
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = torch.from_file(self.path, shared=False, size=self.n, dtype=torch.uint8)
        return self.conv(x) + b.float().mean()


class Writer(nn.Module):
    """Overwrites the first bytes of ``path`` (``shared=True`` maps the file writable)."""

    def __init__(self, path: str, n: int) -> None:
        super().__init__()
        self.path, self.n = path, n
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = torch.from_file(self.path, shared=True, size=self.n, dtype=torch.uint8).fill_(88)
        return self.conv(x) + b.float().sum() * 0.0  # used, so the scripted graph keeps the write


class Spinner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = 0
        while i >= 0:
            i = i + 1
        return self.conv(x)


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x))


def _save(m: nn.Module, path: Path) -> Path:
    torch.jit.script(m).save(str(path))
    return path


@pytest.fixture
def unisolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The converter as a plain process: no bubblewrap on PATH."""
    real_which = shutil.which
    monkeypatch.setattr(convert.shutil, "which", lambda n: None if n == "bwrap" else real_which(n))
    convert.isolation.cache_clear()
    yield
    convert.isolation.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_isolation() -> Iterator[None]:
    convert.isolation.cache_clear()
    yield
    convert.isolation.cache_clear()


def test_this_host_isolates_with_bubblewrap() -> None:
    iso = convert.isolation()
    assert iso["converter"] == "bubblewrap" and iso["isolated"] is True, iso


def test_a_plain_model_converts(tmp_path: Path) -> None:
    import onnx

    data, iso = convert.torchscript_to_onnx(_save(Plain(), tmp_path / "m.pt"), INPUTS, 17)
    model = onnx.load_from_string(data)
    assert iso["isolated"] and [n.op_type for n in model.graph.node].count("Conv") == 1


def test_the_converter_sees_no_other_file_and_writes_nowhere_but_its_output(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "in").write_text("{}")
    argv = convert.bwrap_argv(tmp_path / "in", tmp_path / "in", tmp_path / "out")
    assert argv is not None
    venv = sys.prefix
    repo = Path(worker.__file__).resolve().parent.parent  # only its worker/ package is visible
    assert (repo / "app").is_dir() and (repo / "pyproject.toml").is_file()
    script = (
        f"test ! -e {tmp_path} && test ! -e /etc/passwd && test ! -e {repo}/app && "
        f"test ! -e {repo}/pyproject.toml && test -r {repo}/worker/engine/convert.py && "
        f"! touch {venv}/pwned 2>/dev/null && ! touch /usr/pwned 2>/dev/null && "
        f'test "$(id -u)" = 65534 && touch {convert.OUT_DIR}/ok && test -r {convert.IN_MODEL}'
    )
    res = subprocess.run([*argv, "--", "/bin/sh", "-c", script], capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "ok").is_file() and not Path(venv, "pwned").exists()


def test_no_network_inside(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "in").write_text("{}")
    argv = convert.bwrap_argv(tmp_path / "in", tmp_path / "in", tmp_path / "out")
    code = (
        "import socket; print([n for _, n in socket.if_nameindex()]); s = socket.socket(); "
        "s.settimeout(2); s.connect(('127.0.0.1', 6379))"
    )
    res = subprocess.run([*argv, "--", sys.executable, "-c", code], capture_output=True, timeout=30)  # type: ignore[misc]
    # the host's Redis listens on 127.0.0.1:6379; inside there is only a loopback of its own
    assert res.stdout.strip() == b"['lo']" and b"ConnectionRefusedError" in res.stderr, res.stderr


def test_a_model_cannot_read_a_file_and_leak_it_into_the_graph(tmp_path: Path) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    target = tmp_path / "secret.txt"
    target.write_text(secret)
    model = _save(Reader(str(target), len(secret)), tmp_path / "reader.pt")
    with pytest.raises(UnsupportedOpError) as e:
        convert.torchscript_to_onnx(model, INPUTS, 17)
    assert secret not in e.value.detail


def test_without_isolation_the_same_model_does_read_the_file(tmp_path: Path, unisolated: None) -> None:
    """The attack above is real: as a plain process the secret ends up inside the exported graph."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    secret = f"s3cret-{uuid.uuid4().hex}"
    target = tmp_path / "secret.txt"
    target.write_text(secret)
    model = _save(Reader(str(target), len(secret)), tmp_path / "reader.pt")
    data, iso = convert.torchscript_to_onnx(model, INPUTS, 17)
    assert iso["isolated"] is False and iso["converter"] == "process"
    g = onnx.load_from_string(data).graph
    consts = [numpy_helper.to_array(a.t) for n in g.node for a in n.attribute if a.type == a.TENSOR]
    consts += [numpy_helper.to_array(i) for i in g.initializer]
    expected = np.frombuffer(secret.encode(), np.uint8).astype(np.float32).mean()
    assert any(c.size == 1 and abs(float(c.reshape(())) - expected) < 1e-3 for c in consts)


def test_a_model_cannot_write_a_file(tmp_path: Path) -> None:
    victim = tmp_path / "report.json"
    victim.write_text('{"ssim": 0.5}')
    model = _save(Writer(str(victim), 4), tmp_path / "writer.pt")
    with pytest.raises(UnsupportedOpError, match="No such file"):  # the file is not there to write
        convert.torchscript_to_onnx(model, INPUTS, 17)
    assert victim.read_text() == '{"ssim": 0.5}'


def test_without_isolation_the_same_model_does_write(tmp_path: Path, unisolated: None) -> None:
    victim = tmp_path / "report.json"
    victim.write_text('{"ssim": 0.5}')
    with pytest.raises(UnsupportedOpError, match="from_file"):  # it writes, then fails to export
        convert.torchscript_to_onnx(_save(Writer(str(victim), 4), tmp_path / "writer.pt"), INPUTS, 17)
    assert victim.read_text() == 'XXXXim": 0.5}'


def test_refused_when_isolation_is_required_but_missing(
    tmp_path: Path, unisolated: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(convert.REQUIRE_ENV, "1")
    with pytest.raises(convert.IsolationUnavailableError, match="bubblewrap"):
        convert.torchscript_to_onnx(_save(Plain(), tmp_path / "m.pt"), INPUTS, 17)


def test_a_model_that_never_returns_is_stopped(tmp_path: Path) -> None:
    with pytest.raises(ResourceLimitError, match="took over 8 s"):
        convert.torchscript_to_onnx(_save(Spinner(), tmp_path / "spin.pt"), INPUTS, 17, timeout=8)


def test_a_broken_archive_is_corrupt_model(tmp_path: Path) -> None:
    p = tmp_path / "m.pt"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(CorruptModelError):
        convert.torchscript_to_onnx(p, INPUTS, 17)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ({"code": "corrupt_model", "detail": "x"}, "corrupt_model"),
        ({"code": "succeeded", "detail": "forged"}, "conversion_failed"),  # only codes it may say
        ({"code": "unsupported_op"}, None),  # malformed: ignored
    ],
)
def test_the_converter_status_is_checked(tmp_path: Path, status: dict[str, str], code: str | None) -> None:
    p = tmp_path / "status.json"
    p.write_text(json.dumps(status))
    got = convert._read_status(p)
    assert (got and got["code"]) == code


class Bomb(nn.Module):
    """Asks for 50 GiB in ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = torch.ones([53687091200], dtype=torch.uint8)  # 50 GiB
        return self.conv(x) + big[:1].float()


def test_a_memory_bomb_is_resource_limit(tmp_path: Path) -> None:
    with pytest.raises(ResourceLimitError, match="out of memory"):
        convert.torchscript_to_onnx(_save(Bomb(), tmp_path / "bomb.pt"), INPUTS, 17, memory_bytes=6 * 1024**3)
