"""Import boundaries (docs/architecture.md), checked on the source: imports go one way.

- ``worker/`` never imports ``app/`` (at module level or inside a function);
- the shared, torch-free layer (``worker/core/`` and the torch-free modules beside it) imports no
  torch, onnxruntime or engine code, and nothing of the worker that runs jobs;
- ``app/`` imports only that shared layer from ``worker/``; the CLI group (``app/cli.py``,
  ``app/demo.py``, ``app/serve.py``) may also start the engine or read the zoo, lazily, for the
  local ``compress`` and ``demo`` commands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = (
    "worker.core",
    "worker.errors",
    "worker.spec",
    "worker.spec_cli",
    "worker.report_schema",
    "worker.model_checks",
)
CLI_GROUP = {"app/cli.py", "app/demo.py", "app/serve.py"}
CLI_MAY_USE = ("worker.engine.pipeline", "worker.zoo.registry")
HEAVY = ("torch", "torchvision", "onnxruntime", "onnx2torch", "torch_pruning", "onnxslim")


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, wherever the import statement is."""
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names]
    return out


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_worker_never_imports_app() -> None:
    bad = {
        str(p.relative_to(ROOT)): [m for m in _imports(p) if _under(m, ("app",))] for p in _files("worker")
    }
    assert not {k: v for k, v in bad.items() if v}


@pytest.mark.parametrize("mod", SHARED)
def test_the_shared_layer_is_torch_free_and_runs_no_jobs(mod: str) -> None:
    base = ROOT / Path(*mod.split("."))
    files = _files(str(base.relative_to(ROOT))) if base.is_dir() else [base.with_suffix(".py")]
    assert files
    for p in files:
        bad = [
            m
            for m in _imports(p)
            if _under(m, HEAVY) or (_under(m, ("worker",)) and not _under(m, SHARED) and m != "worker")
        ]
        assert not bad, f"{p.relative_to(ROOT)} imports {bad}"


def test_app_imports_only_the_shared_layer_of_the_worker() -> None:
    found = {}
    for p in _files("app"):
        rel = str(p.relative_to(ROOT))
        allowed = SHARED + (CLI_MAY_USE if rel in CLI_GROUP else ())
        bad = [m for m in _imports(p) if _under(m, ("worker",)) and m != "worker" and not _under(m, allowed)]
        bad += [m for m in _imports(p) if _under(m, HEAVY)]
        if bad:
            found[rel] = bad
    assert not found


def test_the_rules_see_real_imports() -> None:
    """The checker itself: it finds imports inside functions and ``from x import y`` names."""
    assert "worker.engine.pipeline" in _imports(ROOT / "app" / "cli.py")
    assert "worker.core.settings.Settings" in _imports(ROOT / "worker" / "tasks.py")
    assert _module(ROOT / "worker" / "core" / "__init__.py") == "worker.core"


def test_a_module_over_400_lines_says_why() -> None:
    """Issue 11: no module over ~400 lines without a stated reason (in its docstring)."""
    files = [*ROOT.glob("app/**/*.py"), *ROOT.glob("worker/**/*.py")]
    assert len(files) > 50  # the rule sees the real tree
    for path in files:
        text = path.read_text()
        if text.count("\n") > 400:
            doc = text.split('"""')[1] if text.lstrip().startswith('"""') else ""
            assert "Longer than 400 lines because" in doc, path
