"""The dashboard and the alert rules in docs/observability/ read only metrics and labels that
exist, read them the right way (counters and histograms through rate() or increase(), quantiles
by `le`), and every alert points at its section of docs/observability.md.

The catalogue is what the apps' metrics modules register in prometheus-client's REGISTRY, plus
the collectors the worker's exporter reads at scrape time (the queues' length), which are not
registered there. A missing module or an unknown name fails with the list of them.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "observability" / "grafana-dashboard.json"
ALERTS = ROOT / "docs" / "observability" / "alerts.yml"
RUNBOOK = ROOT / "docs" / "observability.md"

METRICS_MODULES = (
    "core.metrics",
    "core.task_observability",  # the Celery tasks' metrics and the queue-length collector
    "accounts.metrics",  # throttle refusals (sign-in and the key-check budget)
    "routing.gateway.metrics",
    "credits.metrics",
    "connections.metrics",
    "byok.metrics",
)
FLY_LABELS = frozenset({"app", "region", "host", "instance"})  # added by Fly to every scraped series
SEVERITIES = frozenset({"critical", "warning"})
RUNBOOK_URL = re.compile(r"docs/observability\.md#([a-z0-9_-]+)")

METRIC = re.compile(r"\b(niyra_[a-zA-Z0-9_]+)\b\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
RANGE_FUNCTIONS = ("rate", "increase")
ABSENCE_FUNCTIONS = ("absent", "absent_over_time")


@dataclass(frozen=True)
class Series:
    """One series name as Prometheus stores it (`..._total`, `..._bucket`, a gauge's own name)."""

    family: str
    type: str  # counter, gauge or histogram: the family's
    labels: frozenset[str]

    @property
    def cumulative(self) -> bool:
        return self.type in ("counter", "histogram")


# --- The catalogue --------------------------------------------------------------------------


def _series_of(family: str, kind: str, labels: frozenset[str]) -> dict[str, Series]:
    if kind == "counter":
        return {f"{family}_total": Series(family, kind, labels)}
    if kind == "histogram":
        return {
            f"{family}_bucket": Series(family, kind, labels | {"le"}),
            f"{family}_sum": Series(family, kind, labels),
            f"{family}_count": Series(family, kind, labels),
        }
    return {family: Series(family, kind, labels)}


def _scrape_time_collectors() -> list[Collector]:
    """The worker's exporter reads these when scraped; they hold no state to register. Each is
    made with a source that answers, so its samples show the labels it serves."""
    try:
        from core.task_observability import QueueLengthCollector
    except ImportError:  # reported with the metrics modules
        return []
    queues = QueueLengthCollector("memory://", ["celery"], transport_options={})
    queues.lengths = lambda: {"celery": 0}  # type: ignore[method-assign]
    return [queues]


@functools.cache
def catalogue() -> tuple[dict[str, Series], tuple[str, ...]]:
    """Series name -> Series, and the metrics modules that could not be imported."""
    missing, labels_of = [], {}
    for name in METRICS_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
            continue
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                # prometheus-client keeps a metric's label names only on the object itself.
                labels_of[next(iter(value.describe())).name] = frozenset(value._labelnames)
    known: dict[str, Series] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("niyra_"):
            continue
        if family.name not in labels_of:  # its labels are unknown: every use of it would fail
            missing.append(f"the module declaring {family.name} (add it to METRICS_MODULES)")
        known |= _series_of(family.name, family.type, labels_of.get(family.name, frozenset()))
    for collector in _scrape_time_collectors():
        for family in collector.collect():
            labels = frozenset(label for sample in family.samples for label in sample.labels)
            known |= _series_of(family.name, family.type, labels)
    return known, tuple(missing)


# --- The expressions ------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside it


def expressions() -> Iterator[tuple[str, str, str]]:
    """(where, expression, legend) for every query of the dashboard and every alert rule."""
    for panel in panels():
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"], target.get("legendFormat", "")
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            yield f"variable {variable['name']!r}", query["query"], ""
    for rule in alert_rules():
        yield f"alert {rule['alert']}", rule["expr"], ""


def _matching(expr: str, start: int, step: int) -> int:
    """The index of the bracket matching the one at `start` (step 1: forwards, -1: backwards)."""
    opening, closing = ("(", ")") if step == 1 else (")", "(")
    depth, index = 0, start
    while 0 <= index < len(expr):
        if expr[index] == opening:
            depth += 1
        elif expr[index] == closing:
            depth -= 1
            if depth == 0:
                return index
        index += step
    raise AssertionError(f"unbalanced brackets in {expr!r}")


def groupings(expr: str) -> Iterator[tuple[frozenset[str], int, int]]:
    """(labels, start, end) of each `by (...)`/`without (...)` and the span of the expression it
    aggregates: `sum by (x) (expr)` or `sum(expr) by (x)`."""
    for match in GROUPING.finditer(expr):
        labels = frozenset(label.strip() for label in match.group(1).split(",") if label.strip())
        after = len(expr) - len(expr[match.end() :].lstrip())
        if after < len(expr) and expr[after] == "(":
            yield labels, after, _matching(expr, after, 1)
            continue
        before = len(expr[: match.start()].rstrip()) - 1
        assert before >= 0 and expr[before] == ")", f"a grouping that aggregates nothing in {expr!r}"
        yield labels, _matching(expr, before, -1), before


def selectors(expr: str) -> Iterator[tuple[str, frozenset[str], int, int]]:
    """(series name, labels matched, start, end) of each niyra_ selector."""
    for match in METRIC.finditer(expr):
        labels = frozenset(MATCHER.findall(match.group(2) or ""))
        yield match.group(1), labels, match.start(), match.end()


def _called_with(expr: str, start: int, functions: tuple[str, ...]) -> bool:
    """Whether the selector at `start` is the first argument of one of `functions`."""
    head = expr[:start].rstrip()
    return head.endswith("(") and re.search(rf"\b(?:{'|'.join(functions)})\s*\($", head) is not None


# --- The tests ------------------------------------------------------------------------------


def test_every_metric_the_dashboard_and_alerts_read_exists() -> None:
    known, missing = catalogue()
    unknown = sorted(
        {
            f"{name} ({where})"
            for where, expr, _ in expressions()
            for name, _labels, _start, _end in selectors(expr)
            if name not in known
        }
    )

    assert not missing and not unknown, (
        "metrics modules that could not be imported:\n  "
        + "\n  ".join(missing or ["none"])
        + "\nseries no metrics module declares:\n  "
        + "\n  ".join(unknown or ["none"])
    )


def test_every_label_a_query_uses_exists_on_its_metric() -> None:
    known, _ = catalogue()
    problems = []
    for where, expr, legend in expressions():
        found = [(name, start) for name, _labels, start, _end in selectors(expr) if name in known]
        for name, labels, _start, _end in selectors(expr):
            if name in known:
                extra = labels - known[name].labels - FLY_LABELS
                problems += [f"{where}: {name} has no label {label!r}" for label in sorted(extra)]
        grouped: set[str] = set()
        for labels, start, end in groupings(expr):
            grouped |= labels
            for name, position in found:
                if start <= position <= end:
                    extra = labels - known[name].labels - FLY_LABELS
                    problems += [f"{where}: by ({label}) but {name} has no such label" for label in sorted(extra)]
        problems += [
            f"{where}: the legend shows {{{{{label}}}}}, which no by (...) keeps"
            for label in LEGEND_LABEL.findall(legend)
            if label not in grouped
        ]

    assert not problems, "\n".join(problems)


def test_counters_and_histograms_are_read_as_rates_and_quantiles_by_le() -> None:
    known, _ = catalogue()
    problems = []
    for where, expr, _ in expressions():
        spans = list(groupings(expr))
        for name, _labels, start, end in selectors(expr):
            series = known.get(name)
            if series is None or where.startswith("variable") or _called_with(expr, start, ABSENCE_FUNCTIONS):
                continue
            ranged = expr[end:].lstrip().startswith("[") and _called_with(expr, start, RANGE_FUNCTIONS)
            if series.cumulative and not ranged:
                problems.append(f"{where}: {name} is cumulative: read it through rate() or increase()")
            if not series.cumulative and _called_with(expr, start, RANGE_FUNCTIONS):
                problems.append(f"{where}: {name} is a gauge: rate() and increase() don't apply")
            if name.endswith("_bucket") and not any(
                "le" in labels and low <= start <= high for labels, low, high in spans
            ):
                problems.append(f"{where}: {name} must be summed by (le, ...) before histogram_quantile")

    assert not problems, "\n".join(problems)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {_anchor(line.lstrip("#")) for line in RUNBOOK.read_text().splitlines() if line.startswith("#")}


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section() -> None:
    anchors = runbook_anchors()
    rules = alert_rules()
    problems = []
    for rule in rules:
        name = rule.get("alert", "<no name>")
        if rule.get("labels", {}).get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity must be one of {sorted(SEVERITIES)}")
        annotations = rule.get("annotations", {})
        problems += [f"{name}: no {field}" for field in ("summary", "description") if not annotations.get(field)]
        url = RUNBOOK_URL.fullmatch(annotations.get("runbook_url", ""))
        if url is None:
            problems.append(f"{name}: runbook_url must be docs/observability.md#<section>")
        elif url.group(1) not in anchors:
            problems.append(f"{name}: docs/observability.md has no section #{url.group(1)}")
    names = [rule.get("alert") for rule in rules]

    assert not problems, "\n".join(problems)
    assert len(names) == len(set(names)), f"alert names repeat: {names}"


def test_the_dashboard_reads_the_data_source_it_asks_for() -> None:
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    panel_ids = [panel["id"] for panel in panels()]
    ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    wrong = [
        panel["title"]
        for panel in panels()
        if panel["type"] != "row"
        and (panel.get("datasource") != ds or any(target.get("datasource") != ds for target in panel["targets"]))
    ]

    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert {"app", "instance"} <= set(variables)
    assert not wrong, f"panels not on ${{DS_PROMETHEUS}}: {wrong}"
    assert len(panel_ids) == len(set(panel_ids)), "panel ids repeat"


def test_the_runbook_lists_every_metric_and_only_those() -> None:
    known, _ = catalogue()
    # A histogram is listed by its family's name, a counter and a gauge by their series' name.
    names = {series.family if series.type == "histogram" else name for name, series in known.items()}
    listed = set(re.findall(r"`(niyra_[a-z0-9_]+)`", RUNBOOK.read_text()))

    assert sorted(names - listed) == [], "metrics missing from the runbook's catalogue"
    assert sorted(listed - names - set(known)) == [], "the runbook names metrics that don't exist"
