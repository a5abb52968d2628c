"""The report page's target-search section, rendered from real jobs on a tiny generator: a search
whose target cannot be met (SSIM 0.9999) and a plain ratio job. The page is parsed with
html.parser, not matched as text."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from worker.engine.report import render_html
from worker.report_schema import Report, SearchCandidate
from worker.spec import CompressionSpec

VOID = {"meta", "img", "br", "hr", "input", "link", "col", "source", "wbr", "area", "base"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    parts: list[str | Node] = field(default_factory=list)

    def text(self) -> str:
        out = "".join(p if isinstance(p, str) else p.text() for p in self.parts)
        return re.sub(r"\s+", " ", out).strip()

    def iter(self) -> list[Node]:
        out = [self]
        for c in self.children:
            out += c.iter()
        return out

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        """Descendants (and self) with ``tag`` whose attributes equal ``attrs`` (``class_`` for class;
        a class matches one of the element's classes)."""

        def ok(n: Node) -> bool:
            if tag is not None and n.tag != tag:
                return False
            for k, v in attrs.items():
                if k == "class_":
                    if v not in n.attrs.get("class", "").split():
                        return False
                elif n.attrs.get(k.replace("_", "-")) != v:
                    return False
            return True

        return [n for n in self.iter() if ok(n)]

    def one(self, tag: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]


class _Tree(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        n = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(n)
        self.stack[-1].parts.append(n)
        if tag not in VOID:
            self.stack.append(n)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        n = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(n)
        self.stack[-1].parts.append(n)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        for i in range(len(self.stack) - 1, 0, -1):  # close up to the matching open element
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].parts.append(data)


def parse(page: str) -> Node:
    t = _Tree()
    t.feed(page)
    t.close()
    return t.root


def _compress(model: Path, doc: dict[str, Any], out: Path) -> Report:
    from worker.engine.pipeline import compress

    compress(model, CompressionSpec.model_validate(doc), out)
    return Report.model_validate(json.loads((out / "report.json").read_text()))


@pytest.fixture(scope="module")
def missed(tiny_onnx: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Report, Node]:
    """A real search job whose quality target a tiny model cannot reach in its budget, INT8/FP16
    copies tried too; its report.html as written by the worker, parsed."""
    out = tmp_path_factory.mktemp("search") / "out"
    report = _compress(
        tiny_onnx["dcgan"], {"target": {"min_ssim": 0.9999}, "distill": {"budget_seconds": 20}}, out
    )
    assert report.search is not None and report.summary.target_met is False  # the premise
    return report, parse((out / "report.html").read_text())


@pytest.fixture(scope="module")
def plain(tiny_onnx: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Report, Node]:
    out = tmp_path_factory.mktemp("plain") / "out"
    report = _compress(tiny_onnx["dcgan"], {"prune": {"ratio": 0.5}, "distill": {"budget_seconds": 8}}, out)
    return report, parse((out / "report.html").read_text())


def _cands(report: Report) -> list[SearchCandidate]:
    assert report.search is not None
    return report.search.candidates


def _pick(report: Report) -> str:
    assert report.search is not None
    return report.search.pick


def _floats(points: str) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in (p.split(",") for p in points.split())]


def _marker_xy(g: Node) -> tuple[float, float]:
    """Centre of a point's marker (its first circle or rect)."""
    m = next(n for n in g.children if n.tag in ("circle", "rect"))
    if m.tag == "circle":
        return float(m.attrs["cx"]), float(m.attrs["cy"])
    return float(m.attrs["x"]) + 4, float(m.attrs["y"]) + 4


def test_the_section_says_what_was_asked_what_was_picked_and_by_how_much_the_target_was_missed(
    missed: tuple[Report, Node],
) -> None:
    report, page = missed
    s = report.search
    assert s is not None
    sec = page.one("section", id="search")
    assert page.find_all("a", href="#search"), "the table of contents links the section"
    asked = sec.one(data_testid="search-asked").text()
    assert "SSIM" in asked and "0.9999" in asked and f"{len(s.candidates)} candidates" in asked
    verdict = sec.one(data_testid="search-verdict")
    assert verdict.attrs["data-met"] == "false" and "bad" in verdict.attrs["class"]
    text = verdict.text()
    assert text.startswith("Target missed") and "Target met" not in text
    shipped = report.summary.ssim
    assert shipped is not None
    assert f"{shipped:.4g}" in text
    gap = re.search(r"short by ([0-9.e-]+)", text)
    assert gap and float(gap.group(1)) == pytest.approx(0.9999 - shipped, rel=0.05)
    assert f"closest one ({s.pick})" in text
    assert s.pick in sec.one(data_testid="search-why").text()
    (row,) = sec.find_all("tr", data_testid="search-target")
    assert row.attrs["data-target"] == "min_ssim" and "missed" in row.text()


def test_the_front_has_a_point_per_candidate_the_pick_ringed_and_the_target_line_above_them(
    missed: tuple[Report, Node],
) -> None:
    report, page = missed
    cands = _cands(report)
    svg = page.one("section", id="search").one("svg", data_testid="chart-front")
    points = svg.find_all("g", class_="point")
    assert len(points) == len(cands)
    assert sorted(g.attrs["data-id"] for g in points) == sorted(c.id for c in cands)
    by_id = {c.id: c for c in cands}
    rings = svg.find_all(data_testid="front-pick")
    assert len(rings) == 1
    (picked,) = [g for g in points if rings[0] in g.children]
    assert picked.attrs["data-id"] == _pick(report) and by_id[picked.attrs["data-id"]].picked
    for g in points:  # quantized copies are squares, float candidates circles
        c = by_id[g.attrs["data-id"]]
        marker = next(n.tag for n in g.children if n.tag in ("circle", "rect"))
        assert marker == ("circle" if c.quantize == "none" else "rect"), c.id
    assert any(c.quantize != "none" for c in cands), "the search tried quantized copies"
    # x grows with latency, y with SSIM
    xy = {g.attrs["data-id"]: _marker_xy(g) for g in points}
    xs = [xy[c.id][0] for c in sorted(cands, key=lambda c: c.latency_ms)]
    ys = [xy[c.id][1] for c in sorted(cands, key=lambda c: c.ssim or 0.0)]
    assert all(b >= a - 0.11 for a, b in itertools.pairwise(xs)) and xs[-1] - xs[0] > 10
    assert all(b <= a + 0.11 for a, b in itertools.pairwise(ys)) and ys[0] - ys[-1] > 10
    # the unreachable target lies above every point (smaller y is higher)
    target = svg.one("line", data_testid="target-ssim")
    assert all(float(target.attrs["y1"]) < y for _, y in xy.values())
    # the front's line joins exactly the Pareto candidates, by latency
    front = sorted((c for c in cands if c.pareto), key=lambda c: c.latency_ms)
    if len(front) > 1:
        line = _floats(svg.one("polyline", data_testid="front-line").attrs["points"])
        flat = [v for c in front for v in xy[c.id]]
        assert [v for pt in line for v in pt] == pytest.approx(flat, abs=0.11)
    labels = " ".join(t.text() for t in svg.find_all("text", class_="label"))
    assert "latency" in labels and "ms" in labels and "1 thread" in labels and "SSIM" in labels


def test_the_table_lists_every_candidate_fastest_first_with_its_steps_and_the_pick_highlighted(
    missed: tuple[Report, Node],
) -> None:
    report, page = missed
    cands = _cands(report)
    table = page.one("section", id="search").one("table", data_testid="search-table")
    rows = table.find_all("tr", data_testid="search-row")
    assert [r.attrs["data-id"] for r in rows] == [c.id for c in sorted(cands, key=lambda c: c.latency_ms)]
    by_id = {c.id: c for c in cands}
    highlighted = [r for r in rows if "picked" in r.attrs.get("class", "").split()]
    assert [r.attrs["data-id"] for r in highlighted] == [_pick(report)]
    for r in rows:
        c = by_id[r.attrs["data-id"]]
        assert r.one("td", data_testid="row-steps").text() == str(c.distill_steps)
        assert float(r.one("td", data_testid="row-latency").text()) == pytest.approx(c.latency_ms, rel=0.01)
    assert by_id[_pick(report)].distill_steps > 0


def test_the_time_table_shows_the_search(missed: tuple[Report, Node]) -> None:
    report, page = missed
    assert report.timing is not None and "search" in report.timing.stages
    rows = {
        tr.find_all("td")[0].text(): tr.find_all("td")[1].text()
        for tr in page.one("table", data_testid="timing-table").find_all("tr")
        if tr.find_all("td")
    }
    assert float(rows["search"]) == pytest.approx(report.timing.stages["search"], abs=0.06)


def test_kept_files_are_relative_links_and_untrained_candidates_still_get_a_point(
    missed: tuple[Report, Node],
) -> None:
    """The same real report with the fields a sweep and a cost target would fill: each candidate's
    kept file, an untrained (timed only) candidate, a latency target."""
    report, _ = missed
    s = report.search
    assert s is not None
    kept = [c.model_copy(update={"artifact": f"candidate-{c.id[1:]}.onnx"}) for c in s.candidates]
    structural = s.candidates[0].model_copy(
        update={"id": "c9", "ssim": None, "psnr": None, "distill_steps": 0, "picked": False, "pareto": False}
    )
    pick = next(c for c in s.candidates if c.picked)
    search = s.model_copy(
        update={
            "candidates": [*kept, structural],
            "targets": {**s.targets, "max_latency_ms": pick.latency_ms * 2},
        }
    )
    page = parse(render_html(report.model_copy(update={"search": search}), None)[0])
    sec = page.one("section", id="search")
    links = [a.attrs["href"] for a in sec.one("table", data_testid="search-table").find_all("a")]
    assert sorted(links) == sorted(str(c.artifact) for c in kept)
    svg = sec.one("svg", data_testid="chart-front")
    assert len(svg.find_all("g", class_="point")) == len(search.candidates)
    assert [g.attrs["data-id"] for g in svg.find_all("g", data_testid="front-point-unmeasured")] == ["c9"]
    lat = svg.one("line", data_testid="target-latency")
    px = _marker_xy(svg.one("g", data_id=pick.id))[0]
    assert float(lat.attrs["x1"]) > px  # the pick is left of (faster than) the latency target
    row = sec.one("tr", data_testid="search-target", data_target="max_latency_ms")
    assert "ms" in row.text()


def test_a_met_target_says_so(missed: tuple[Report, Node]) -> None:
    report, _ = missed
    s = report.search
    assert s is not None
    summary = report.summary.model_copy(update={"target_met": True, "target_misses": []})
    r = report.model_copy(
        update={"summary": summary, "search": s.model_copy(update={"targets": {"min_ssim": 0.5}})}
    )
    verdict = parse(render_html(r, None)[0]).one(data_testid="search-verdict")
    assert verdict.attrs["data-met"] == "true" and verdict.text().startswith("Target met")
    assert "short by" not in verdict.text()


def test_a_plain_ratio_job_has_no_search_section(plain: tuple[Report, Node]) -> None:
    report, page = plain
    assert report.search is None and report.summary.target_met is None
    assert not page.find_all(id="search") and not page.find_all(data_testid="chart-front")
    assert not page.find_all("a", href="#search")
    assert page.find_all("section", id="quality")  # the page itself is there
    timing = page.one("table", data_testid="timing-table").text()
    assert "distill" in timing and "search" not in timing
