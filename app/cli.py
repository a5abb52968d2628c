"""The ``gancompress`` command.

- ``compress MODEL --out DIR [spec flags]``: run the engine here, in-process.
- ``submit MODEL --server URL [spec flags] [--wait --out DIR --fail-if 'ssim<0.9' --api-key K]``:
  the CI client; exit 0 (passed), 1 (a quality gate or --fail-if failed), 2 (job failed or bad input).
- ``serve [--host H] [--port P] [--workers N]``: Redis (embedded without REDIS_URL), worker(s), API.
- ``demo``: serve, compress the bundled example generator over HTTP, print its summary and report URL.

Errors are one line on stderr: ``gancompress: error: <code>: <detail>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import operator
import os
import re
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.client import ApiError, GanCompressClient
from worker.errors import BadSpecError, GanCompressError, first_line, out_of_memory
from worker.spec_cli import add_spec_arguments, parse_calibration, spec_from_args

EXIT_OK, EXIT_GATE, EXIT_ERROR = 0, 1, 2
OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq, "!=": operator.ne,
}  # fmt: skip
FAIL_IF = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*$"
)
SUMMARY_KEYS = ("ssim", "psnr", "l1", "speedup", "mac_reduction", "param_reduction", "size_reduction")


def fail(code: str, detail: str) -> int:
    one_line = " ".join(str(detail).split())
    print(f"gancompress: error: {code}: {one_line}", file=sys.stderr)
    return EXIT_ERROR


def fail_with(e: GanCompressError | MemoryError) -> int:
    """``fail`` for an error raised by a job or a gate; running out of memory is ``resource_limit``."""
    if isinstance(e, MemoryError):
        return fail("resource_limit", "ran out of memory")
    if out_of_memory(e):
        return fail("resource_limit", f"ran out of memory: {first_line(e)[:300]}")
    return fail(e.code, e.detail)


# --- output ----------------------------------------------------------------------------------


class ProgressView:
    """A rich progress bar on a terminal, plain lines otherwise (CI logs)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._bar: Any = None
        self._task: Any = None
        self._last: tuple[str, int] | None = None

    def __enter__(self) -> ProgressView:
        if self.enabled and self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("{task.description:<10}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False,
                console=Console(stderr=True),
            )  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task("queued", total=1.0, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(
        self, stage: str, fraction: float, step: int = 0, total: int = 0, loss: float | None = None
    ) -> None:
        if not self.enabled:
            return
        info = (f"{step}/{total}" if total else "") + (f"  loss {loss:.4f}" if loss is not None else "")
        if self._bar is not None:
            self._bar.update(self._task, description=stage, completed=fraction, info=info)
            return
        key = (stage, int(fraction * 10))
        if key != self._last:  # one line per stage and per 10 %
            self._last = key
            print(f"[{stage}] {fraction * 100:5.1f}% {info}".rstrip(), file=sys.stderr, flush=True)


def print_summary(summary: dict[str, Any], extra_rows: list[tuple[str, str]] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="gancompress summary", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in SUMMARY_KEYS + tuple(k for k in summary if k not in SUMMARY_KEYS):
        v = summary.get(key)
        if isinstance(v, bool) or v is None or isinstance(v, dict | list):
            continue
        table.add_row(key, f"{v:.4g}" if isinstance(v, float) else str(v))
    gates = summary.get("gates") if isinstance(summary.get("gates"), dict) else None
    for g in (gates or {}).get("results", []):
        mark = "pass" if g.get("passed") else "FAIL"
        table.add_row(f"gate {g.get('gate')} >= {g.get('threshold')}", f"{mark} ({_num(g.get('value'))})")
    if "gates_passed" in summary:
        table.add_row("gates passed", "yes" if summary["gates_passed"] else "NO")
    if summary.get("target_met") is not None:
        misses = "; ".join(summary.get("target_misses") or [])
        table.add_row("target met", "yes" if summary["target_met"] else f"NO ({misses})")
    for k, v in extra_rows or []:
        table.add_row(k, v)
    Console(file=sys.stdout, width=100).print(table)


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


FAIL_IF_HELP = "exit 1 when it holds, e.g. 'ssim<0.9'; yes/no figures are 1/0: 'target_met==0'"


def check_fail_if(exprs: list[str], summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Evaluate ``--fail-if`` expressions; returns ``(expr, 'FAIL'/'pass')`` rows. Raises BadSpecError."""
    rows = []
    for expr in exprs:
        metric, op, threshold = parse_fail_if(expr)
        # yes/no figures (gates_passed, target_met) count as 1/0: --fail-if 'target_met==0'
        if not isinstance(summary.get(metric), int | float):
            numeric = sorted(k for k, v in summary.items() if isinstance(v, int | float))
            hint = " (target_met is set only when the spec has a target)" if metric == "target_met" else ""
            raise BadSpecError(
                f"--fail-if {expr!r}: the summary has no metric {metric!r}{hint}; it has {numeric}"
            )
        failed = OPS[op](float(summary[metric]), threshold)
        rows.append(
            (
                f"--fail-if {metric}{op}{threshold:g}",
                f"{'FAIL' if failed else 'pass'} ({_num(summary[metric])})",
            )
        )
    return rows


def parse_fail_if(expr: str) -> tuple[str, str, float]:
    m = FAIL_IF.match(expr)
    if not m:
        raise BadSpecError(
            f"--fail-if {expr!r}: expected METRIC<OP>NUMBER, e.g. 'ssim<0.9' (ops: <, <=, >, >=, ==, !=)"
        )
    return m.group(1), m.group(2), float(m.group(3))


def gate_exit(summary: dict[str, Any], fail_if_rows: list[tuple[str, str]]) -> int:
    if summary.get("gates_passed") is False or any(r[1].startswith("FAIL") for r in fail_if_rows):
        return EXIT_GATE
    return EXIT_OK


# --- commands --------------------------------------------------------------------------------


def cmd_compress(args: argparse.Namespace) -> int:
    started_at = time.time()  # the budget covers importing torch too: what the user waits for
    from worker.spec import Progress

    model = Path(args.model)
    if not model.is_file():
        return fail("bad_input", f"model file not found: {model}")
    try:
        for e in args.fail_if:
            parse_fail_if(e)
        spec = spec_from_args(args)
        calibration = parse_calibration(args.calibration)
        from worker.engine.pipeline import compress  # torch is imported here, only for this command

        with ProgressView(not args.quiet) as view:

            def progress(p: Progress) -> None:
                view.update(str(p.stage), p.fraction, p.step, p.total, p.loss)

            report = compress(
                model,
                spec,
                Path(args.out),
                calibration=calibration or None,
                progress=progress,
                fid_weights=Path(args.fid_weights) if args.fid_weights else None,
                started_at=started_at,
            )
        summary = dict(report.get("summary") or {})
        if isinstance(report.get("gates"), dict):
            summary.setdefault("gates", report["gates"])
        rows = check_fail_if(args.fail_if, summary)
    except (GanCompressError, MemoryError) as e:
        return fail_with(e)
    print_summary(summary, [*rows, ("output", str(Path(args.out) / "model.onnx"))])
    return gate_exit(summary, rows)


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        for e in args.fail_if:
            parse_fail_if(e)
        spec = spec_from_args(args)
        calibration = parse_calibration(args.calibration)
    except GanCompressError as e:
        return fail(e.code, e.detail)
    model = Path(args.model)
    if not model.is_file():
        return fail("bad_input", f"model file not found: {model}")
    api_key = args.api_key or os.environ.get("GANCOMPRESS_API_KEY")
    try:
        with GanCompressClient(args.server, api_key, timeout=args.http_timeout) as client:
            m = client.upload_model(model)
            cal_ids = {name: client.upload_calibration(path)["id"] for name, path in calibration.items()}
            spec_json = spec.model_dump(mode="json", exclude_unset=True)
            job = client.submit(
                m["id"], spec_json, cal_ids or None, idempotency_key=f"cli-{uuid.uuid4().hex}"
            )
            print(f"job {job['id']} queued: {client.server}/v1/jobs/{job['id']}", file=sys.stderr)
            if not args.wait:
                print(json.dumps({"id": job["id"], "state": job["state"]}))
                return EXIT_OK
            with ProgressView(not args.quiet) as view:

                def show(j: dict[str, Any]) -> None:
                    p = j.get("progress") or {}
                    view.update(j.get("stage", ""), float(p.get("fraction") or 0), p.get("step") or 0,
                                p.get("total") or 0, p.get("loss"))  # fmt: skip

                job = client.wait(job["id"], show, poll_seconds=args.poll, timeout=args.timeout)
            if args.out and job.get("artifacts"):
                client.download(job, Path(args.out))
    except ApiError as e:
        return fail(e.code, e.detail)
    except KeyboardInterrupt:
        return fail(
            "interrupted", "stopped waiting (the job goes on; cancel it with POST /v1/jobs/{id}:cancel)"
        )
    if job["state"] != "succeeded":
        err = job.get("error") or {}
        return fail(err.get("code", job["state"]), err.get("detail", f"the job was {job['state']}"))
    summary = dict(job.get("summary") or {})
    try:
        rows = check_fail_if(args.fail_if, summary)
    except (GanCompressError, MemoryError) as e:
        return fail_with(e)
    print_summary(summary, [*rows, ("job", job["id"])])
    if "report.html" in job.get("artifacts", {}):
        print(f"report: {job['artifacts']['report.html']}")
    if args.out:
        print(f"artifacts: {Path(args.out).resolve()}")
    return gate_exit(summary, rows)


def cmd_serve(args: argparse.Namespace) -> int:
    from app.serve import Embedded
    from worker.core.settings import Settings

    settings = Settings()
    return Embedded(settings, args.host, args.port, args.workers, settings.data_dir, args.verbose).run()


def cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo

    model = Path(args.model) if args.model else None
    return run_demo(args.host, args.port, args.workers, model, verbose=args.verbose)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gancompress", description="Compress trained GAN generators to small ONNX."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="compress a model here, in-process")
    c.add_argument("model", help="TorchScript (.pt) or ONNX (.onnx) generator")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--quiet", action="store_true", help="no progress display")
    c.add_argument(
        "--fid-weights",
        metavar="FILE",
        help="torchvision inception_v3 state dict: adds FID (student vs teacher) to the report",
    )
    c.add_argument("--fail-if", action="append", default=[], metavar="EXPR", help=FAIL_IF_HELP)
    add_spec_arguments(c)

    s = sub.add_parser("submit", help="submit a model to a gancompress server (for CI)")
    s.add_argument("model", help="TorchScript (.pt) or ONNX (.onnx) generator")
    s.add_argument("--server", default=os.environ.get("GANCOMPRESS_SERVER", "http://localhost:8000"))
    s.add_argument("--api-key", help="API key (default: $GANCOMPRESS_API_KEY)")
    s.add_argument("--wait", action="store_true", help="wait for the job, show progress, print the summary")
    s.add_argument("--out", help="with --wait: download the artifacts here")
    s.add_argument("--fail-if", action="append", default=[], metavar="EXPR", help=FAIL_IF_HELP)
    s.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    s.add_argument("--poll", type=float, default=1.0, help="seconds between status polls")
    s.add_argument("--http-timeout", type=float, default=300.0, help="timeout of one HTTP request")
    s.add_argument("--quiet", action="store_true", help="no progress display")
    add_spec_arguments(s)

    for name, helptext in (("serve", "run the service (API + workers + embedded Redis)"),
                           ("demo", "serve and compress the bundled example through the API")):  # fmt: skip
        v = sub.add_parser(name, help=helptext)
        v.add_argument("--host", default="127.0.0.1")
        v.add_argument("--port", type=int, default=8000)
        v.add_argument("--workers", type=int, default=1, help="compression worker processes")
        v.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
            help="the worker's and the server's logs on the console (default: <data dir>/logs)",
        )  # fmt: skip
        if name == "demo":
            v.add_argument("--model", help="generator to compress (default: the zoo's DCGAN, ONNX)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:  # one INFO line per HTTP request of the client: only with -v
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
    handler = {"compress": cmd_compress, "submit": cmd_submit, "serve": cmd_serve, "demo": cmd_demo}[
        args.command
    ]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as e:  # a client-only install (pip install gancompress)
        extra = EXTRAS.get(args.command)
        if extra is None or not e.name or e.name.split(".")[0] in ("app", "worker"):
            raise
        print(
            f"gancompress: error: missing_dependency: `gancompress {args.command}` needs the {extra!r} "
            f"extra (no module {e.name!r}): pip install 'gancompress[{extra}]'",
            file=sys.stderr,
        )
        return 2


# commands that run the service or the engine here need more than the client install
EXTRAS = {"compress": "worker", "serve": "worker", "demo": "worker"}


if __name__ == "__main__":
    sys.exit(main())
