"""The README and docs/ stay true to the code, and their links resolve."""

from __future__ import annotations

import json
import re
from pathlib import Path

from worker.core.settings import Settings
from worker.spec_cli import validate_spec

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _all_docs() -> str:
    return "\n".join(p.read_text() for p in DOCS)


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "settings.md").read_text()
    for name in Settings.model_fields:
        assert f"`GANCOMPRESS_{name.upper()}`" in text, name


def test_every_error_code_is_documented() -> None:
    """Every code of the one error hierarchy (engine, worker, HTTP), but the abstract bases."""
    import worker.errors as errors

    text = _all_docs()
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


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in DOCS[1:] if f"](docs/{p.name})" not in readme]
    assert not missing and len(DOCS) > 10


def test_relative_links_resolve() -> None:
    broken = []
    for page in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"^(https?:|mailto:|#)", target):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken


def test_every_spec_field_is_in_the_parameters_table() -> None:
    """Each field of every spec section has a row (`section.field`) in docs/engine.md's table."""
    from typing import get_args

    from pydantic import BaseModel

    from worker.spec import CompressionSpec

    text = (ROOT / "docs" / "engine.md").read_text()
    table = text[text.index("## Parameters") : text.index("## Target search")]
    fields = []
    for name, info in CompressionSpec.model_fields.items():
        # a section is a model, or an optional one (target: TargetSpec | None)
        models = [t for t in (info.annotation, *get_args(info.annotation)) if isinstance(t, type)]
        section = next((t for t in models if issubclass(t, BaseModel)), None)
        fields += [f"{name}.{f}" for f in section.model_fields] if section else [name]
    assert len(fields) > 20
    missing = [f for f in fields if f"`{f}`" not in table]
    assert not missing
