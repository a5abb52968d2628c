"""The service README section and the examples stay true to the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

from worker.core.settings import Settings
from worker.spec_cli import validate_spec

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "README.md"


def test_every_setting_is_documented() -> None:
    text = DOC.read_text()
    for name in Settings.model_fields:
        assert f"`GANCOMPRESS_{name.upper()}`" in text, name


def test_every_error_code_is_documented() -> None:
    """Every code of the one error hierarchy (engine, worker, HTTP), but the abstract bases."""
    import worker.errors as errors

    text = DOC.read_text()
    found = [
        c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.GanCompressError)
    ]
    codes = {c.code for c in found} - {"conflict", "bad_input"}
    assert len(codes) > 25
    missing = [c for c in codes if f"`{c}`" not in text]
    assert not missing


def test_examples() -> None:
    validate_spec(json.loads((ROOT / "examples" / "spec.json").read_text()))
    import yaml

    wf = yaml.safe_load((ROOT / "examples" / "ci-github.yml").read_text())
    steps = wf["jobs"]["compress"]["steps"]
    cmd = next(s["run"] for s in steps if "gancompress submit" in s.get("run", ""))
    assert "--wait" in cmd and re.search(r"--fail-if 'ssim<0\.9'", cmd)
