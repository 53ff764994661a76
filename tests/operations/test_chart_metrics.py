"""The chart's PromQL names only metrics the members export, and the KEDA query yields, on a
real scrape of members, the figure the members export.

Every query of the Grafana dashboard, the PrometheusRule and the ScaledObject may only name
metric families documented in README.md's Operations section (the table the exporter is
tested against in test_metrics.py). The KEDA query is evaluated on scraped samples by a tiny
PromQL evaluator for the forms the chart uses: aggregations (max, min, sum, optionally
``by (labels)``) around a selector with ``label="value"`` matchers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.operations.test_helm_chart import CHART, helm
from tests.operations.test_metrics import documented_metrics

DASHBOARD = CHART / "dashboards" / "capgroup.json"

#: The families issue 12 adds to every member (they must be in README's metrics table).
ISSUE_12_METRICS = {
    "capgroup_group_unassigned_partitions",
    "capgroup_group_pending_partitions",
    "capgroup_group_members",
    "capgroup_group_capacity_partitions",
    "capgroup_group_demand_partitions",
    "capgroup_group_capacity_bytes",
    "capgroup_group_demand_bytes",
    "capgroup_group_headroom_members",
    "capgroup_group_replicas_wanted",
    "capgroup_partition_lag_records",
    "capgroup_partition_lag_seconds",
    "capgroup_partition_retention_margin_seconds",
    "capgroup_records_deleted_unconsumed_total",
}
#: What the dashboard must show (issue 12, deliverable 9).
DASHBOARD_MUST_SHOW = {
    "capgroup_group_capacity_partitions",
    "capgroup_group_demand_partitions",
    "capgroup_group_unassigned_partitions",
    "capgroup_group_replicas_wanted",
    "capgroup_partition_lag_records",
    "capgroup_partition_retention_margin_seconds",
    "capgroup_budget_bytes",
    "capgroup_budget_utilisation_ratio",
    "capgroup_rebalances_total",
    "capgroup_revoke_decisions_total",
}
METRIC_NAME = re.compile(r"\bcapgroup_[a-z0-9_]+\b")


def names_in(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (label values such as group names aside)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    return set(METRIC_NAME.findall(without_strings))


def dashboard_queries() -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every query in the dashboard, rows' panels included."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found = []

    def walk(panels: Iterable[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                found.append((panel["title"], target["expr"]))

    walk(dashboard["panels"])
    return found


def rendered(overlay: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result = helm("template", "rel", overlay=overlay)
    assert result.returncode == 0, result.stderr
    return {d["kind"]: d for d in yaml.safe_load_all(result.stdout) if d}


KEDA_AND_RULES = {
    "autoscaling": {
        "keda": {
            "enabled": True,
            "prometheus": {"serverAddress": "http://prom:9090"},
            "lag": {"enabled": True},
        }
    },
    "metrics": {"prometheusRule": {"enabled": True}},
}


def test_the_issue_12_metrics_are_documented_in_the_readme() -> None:
    missing = ISSUE_12_METRICS - documented_metrics()
    assert not missing, f"not in README.md's Operations metrics table: {sorted(missing)}"


def test_every_dashboard_query_names_only_exported_metrics() -> None:
    documented = documented_metrics()
    queries = dashboard_queries()
    assert queries
    unknown = {(title, name) for title, expr in queries for name in names_in(expr) - documented}
    assert not unknown, f"dashboard queries name metrics README does not list: {sorted(unknown)}"
    assert all(names_in(expr) for _, expr in queries), "a query names no capgroup metric"
    shown = set().union(*(names_in(expr) for _, expr in queries))
    assert shown >= DASHBOARD_MUST_SHOW


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "group"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        for target in panel.get("targets", []):
            # Every query is scoped to the selected group and uses the selected data source.
            assert 'group="$group"' in target["expr"], target["expr"]
            assert target["datasource"]["uid"] == "${datasource}"


def test_alert_and_autoscaling_queries_name_only_exported_metrics() -> None:
    documented = documented_metrics()
    objects = rendered(KEDA_AND_RULES)
    exprs = [r["expr"] for g in objects["PrometheusRule"]["spec"]["groups"] for r in g["rules"]]
    exprs += [t["metadata"]["query"] for t in objects["ScaledObject"]["spec"]["triggers"]]
    for expr in exprs:
        assert names_in(expr), expr
        assert names_in(expr) <= documented, f"{expr}: {names_in(expr) - documented}"


# ------------------------------------------------------- a tiny PromQL evaluator ------
@dataclass(frozen=True)
class Sample:
    name: str
    labels: frozenset[tuple[str, str]]
    value: float


Vector = dict[frozenset[tuple[str, str]], float]
AGGREGATIONS = {"max": max, "min": min, "sum": sum}
TOKEN = re.compile(
    r'\s*(?:(?P<word>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<string>"[^"]*")|(?P<op>[(){},=]))'
)


def tokens(query: str) -> list[str]:
    found, position = [], 0
    query = query.strip()
    while position < len(query):
        match = TOKEN.match(query, position)
        assert match, f"cannot read {query[position:]!r}"
        assert match.end() > position, f"cannot read {query[position:]!r}"
        found.append(match.group().strip())
        position = match.end()
    return found


def evaluate(query: str, samples: Iterable[Sample]) -> Vector:
    """Evaluate ``agg [by (l, ...)] (expr)`` and ``metric{l="v", ...}`` on scraped samples,
    as Prometheus would on one instant (only what the chart's queries use)."""
    pending = tokens(query)
    pool = list(samples)

    def take(expected: str | None = None) -> str:
        token = pending.pop(0)
        assert expected is None or token == expected, f"expected {expected!r}, got {token!r}"
        return token

    def expr() -> Vector:
        word = take()
        if word in AGGREGATIONS:
            by: list[str] = []
            if pending[0] == "by":
                take("by")
                take("(")
                while pending[0] != ")":
                    by.append(take())
                    if pending[0] == ",":
                        take(",")
                take(")")
            take("(")
            inner = expr()
            take(")")
            groups: dict[frozenset[tuple[str, str]], list[float]] = {}
            for labels, value in inner.items():
                key = frozenset((k, v) for k, v in labels if k in by)
                groups.setdefault(key, []).append(value)
            return {key: AGGREGATIONS[word](values) for key, values in groups.items()}
        matchers: dict[str, str] = {}
        if pending and pending[0] == "{":
            take("{")
            while pending[0] != "}":
                label = take()
                take("=")
                matchers[label] = take()[1:-1]
                if pending[0] == ",":
                    take(",")
            take("}")
        return {
            s.labels: s.value
            for s in pool
            if s.name == word and all((k, v) in s.labels for k, v in matchers.items())
        }

    result = expr()
    assert not pending, f"unread: {pending}"
    return result


def scraped(text: str, **target: str) -> list[Sample]:
    """Samples of a Prometheus text scrape, with the target labels Prometheus would add."""
    return [
        Sample(s.name, frozenset({**s.labels, **target}.items()), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def scalar(vector: Vector) -> float:
    assert len(vector) == 1, vector
    return next(iter(vector.values()))


def keda_queries(group: str) -> dict[str, str]:
    """The ScaledObject's queries by trigger name, rendered for ``group``."""
    objects = rendered({**KEDA_AND_RULES, "group": {"id": group, "topics": ["t"]}})
    return {t["name"]: t["metadata"]["query"] for t in objects["ScaledObject"]["spec"]["triggers"]}


def test_the_evaluator_reads_the_keda_queries_on_scrapes_of_several_members() -> None:
    """Two members of the group (same group figure, different partitions) and a member of
    another group: the query reads the group's figure once and ignores the other group."""
    member = (
        "# TYPE capgroup_group_replicas_wanted gauge\n"
        'capgroup_group_replicas_wanted{{group="{g}",member="{m}"}} {w}\n'
        "# TYPE capgroup_partition_lag_records gauge\n"
        'capgroup_partition_lag_records{{group="{g}",member="{m}",topic="t",partition="{p}"}}'
        " {lag}\n"
    )
    samples = [
        *scraped(member.format(g="archiver", m="a", w=4, p=0, lag=100), pod="a"),
        *scraped(member.format(g="archiver", m="b", w=4, p=1, lag=50), pod="b"),
        # The partition moving from b to the leader shows on both for one scrape.
        *scraped(member.format(g="archiver", m="a", w=4, p=1, lag=50), pod="a"),
        *scraped(member.format(g="other", m="c", w=9, p=0, lag=7), pod="c"),
    ]
    queries = keda_queries("archiver")
    assert scalar(evaluate(queries["replicas-wanted"], samples)) == 4
    assert scalar(evaluate(queries["lag"], samples)) == 150  # each partition once


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_the_keda_query_on_a_real_scrape_yields_the_members_figure(
    kafka: Any, topic_factory: Any, unique_id: Any
) -> None:
    """Two members capped at 2 partitions on a 6-partition topic (a deficit of 2): scrape
    both members' /metrics over HTTP, evaluate the rendered ScaledObject query on the samples,
    and compare with the capgroup_group_replicas_wanted each member exports."""
    from tests.operations.test_http import free_port, request
    from tests.runtime.harness import Recorder, consumer_settings, running

    topic = await topic_factory(partitions=6)
    group = unique_id("g")
    ports = {"keda-a": free_port(), "keda-b": free_port()}
    members = [
        Recorder(
            name,
            **consumer_settings(
                kafka.bootstrap_servers,
                group,
                topic,
                group_instance_id=name,
                max_partitions=2,
                http_port=port,
                http_host="127.0.0.1",
            ),
        )
        for name, port in ports.items()
    ]
    query = keda_queries(group)["replicas-wanted"]

    families: set[str] = set()

    async def scrape() -> tuple[list[Sample], dict[str, float]]:
        samples: list[Sample] = []
        figures: dict[str, float] = {}
        for name, port in ports.items():
            text = (await request(port, "/metrics")).body.decode()
            families.update(re.findall(r"^# TYPE (capgroup_[a-z_]+) ", text, re.MULTILINE))
            mine = scraped(text, pod=name)
            samples += mine
            for s in mine:
                if s.name == "capgroup_group_replicas_wanted":
                    figures[name] = s.value
        return samples, figures

    async with running(*members, operations=True):
        samples, figures = await scrape()
        with anyio.move_on_after(30):
            # Both members in the same generation, with the group figure decoded.
            while not (
                set(figures) == set(ports)
                and len(set(figures.values())) == 1
                and sum(len(m.assignment) for m in members) == 4
            ):
                await anyio.sleep(0.5)
                samples, figures = await scrape()
        assert figures, (
            "capgroup_group_replicas_wanted is not exported by the members (issue 12, "
            "deliverable 1): the KEDA query has nothing to read"
        )
        assert set(figures) == set(ports), figures
        (figure,) = set(figures.values())
        assert scalar(evaluate(query, samples)) == figure
        # A deficit: the group wants more members than it has.
        assert figure > len(members)
    # Every metric the chart's queries read is a family the members export (the README
    # check above is the documentation side of the same promise).
    objects = rendered(KEDA_AND_RULES)
    exprs = [e for _, e in dashboard_queries()]
    exprs += [r["expr"] for g in objects["PrometheusRule"]["spec"]["groups"] for r in g["rules"]]
    exprs += [t["metadata"]["query"] for t in objects["ScaledObject"]["spec"]["triggers"]]
    read = set().union(*(names_in(expr) for expr in exprs))
    assert read - families == set()
