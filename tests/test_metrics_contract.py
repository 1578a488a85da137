"""The alarms and the dashboard in template.yaml watch metrics the code really publishes.

A CloudWatch metric is its namespace, its name and its full set of dimensions: an alarm on a name the code
never publishes, or on the right name with one dimension too few, is an alarm that never fires. So:

* what the code publishes is read from the code itself: every ``add_metric`` call in the shared layer and
  the functions (names must be ``MetricName`` members or literals, or there is nothing to check), with the
  dimensions its metrics object carries (``add_dimension`` calls; Powertools adds ``service``);
* that reading is checked against what Powertools really emits, by running a handler and the gateway's
  telemetry and parsing their EMF records;
* then every Spotkeeper metric an alarm or a dashboard widget names must be published under exactly that
  name and dimension set (a SEARCH expression may name fewer dimensions), with the dimension values a
  deployment gets (its group name, the functions' service name).
"""

from __future__ import annotations

import ast
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from capacity_harness import schedule
from cfn import ROOT, Stack, load_template

from spotkeeper.gateway.telemetry import RequestRecord, publish
from spotkeeper.observability import MetricName
from spotkeeper.settings import GatewaySettings

NAMESPACE = "Spotkeeper"
CODE_DIRS = [ROOT / "layers" / "spotkeeper" / "spotkeeper", ROOT / "functions"]
# The shared Metrics object every handler flushes (observability.py); other receivers are per-call objects.
SHARED_METRICS = "metrics"
GROUP_DIMENSION = "AutoScalingGroupName"
SERVICE_DIMENSION = "service"  # Powertools adds POWERTOOLS_SERVICE_NAME to every metric


@dataclass(frozen=True)
class Published:
    name: str
    dimensions: frozenset[str]
    where: str


# --- what the code publishes ---------------------------------------------------------------------------
def _python_files() -> Iterator[Path]:
    for directory in CODE_DIRS:
        yield from sorted(directory.rglob("*.py"))


def _calls(node: ast.AST, method: str) -> Iterator[ast.Call]:
    for call in ast.walk(node):
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == method:
            yield call


def _literal_name(call: ast.Call) -> str | None:
    """The name a call passes, when the code says it: a string literal or a ``MetricName`` member."""
    argument = next((k.value for k in call.keywords if k.arg == "name"), call.args[0] if call.args else None)
    if isinstance(argument, ast.Attribute) and ast.unparse(argument.value) == MetricName.__name__:
        return MetricName[argument.attr].value
    return argument.value if isinstance(argument, ast.Constant) and isinstance(argument.value, str) else None


def _receiver(call: ast.Call) -> str:
    return ast.unparse(call.func.value)  # type: ignore[attr-defined]


def _imports_shared_metrics(tree: ast.AST) -> bool:
    return any(
        isinstance(node, ast.ImportFrom)
        and node.module == "spotkeeper.observability"
        and any(alias.name == SHARED_METRICS and alias.asname is None for alias in node.names)
        for node in ast.walk(tree)
    )


def _assigns(scope: ast.AST, name: str) -> bool:
    return any(
        isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store) for node in ast.walk(scope)
    )


def _is_shared(tree: ast.AST, scope: ast.AST, receiver: str) -> bool:
    """The receiver is observability's Metrics object, not a local one that happens to share its name."""
    return receiver == SHARED_METRICS and _imports_shared_metrics(tree) and not _assigns(scope, receiver)


def _enclosing_functions(tree: ast.AST) -> Iterator[ast.AST]:
    yield tree
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def published_by_code() -> dict[str, Published]:
    trees = {path: ast.parse(path.read_text(), filename=str(path)) for path in _python_files()}
    # Dimensions put on the shared metrics object (handlers.tag_metrics) apply to everything it flushes.
    shared_dimensions = {
        name
        for tree in trees.values()
        for scope in _enclosing_functions(tree)
        if scope is not tree
        for call in _calls(scope, "add_dimension")
        if _is_shared(tree, scope, _receiver(call)) and (name := _literal_name(call))
    }
    found: dict[str, Published] = {}
    for path, tree in trees.items():
        where = str(path.relative_to(ROOT))
        for scope in _enclosing_functions(tree):
            for call in _calls(scope, "add_metric"):
                if scope is tree and _inside_function(tree, call):
                    continue  # seen with its own function
                name = _literal_name(call)
                assert name is not None, f"{where}:{call.lineno}: metric name must be a MetricName to be checked"
                receiver = _receiver(call)
                if _is_shared(tree, scope, receiver):
                    dimensions = set(shared_dimensions)
                else:
                    dimensions = {
                        dim
                        for dimension_call in _calls(scope, "add_dimension")
                        if _receiver(dimension_call) == receiver and (dim := _literal_name(dimension_call))
                    }
                published = Published(name, frozenset(dimensions | {SERVICE_DIMENSION}), f"{where}:{call.lineno}")
                earlier = found.setdefault(name, published)
                assert earlier.dimensions == published.dimensions, (
                    f"{name} is published with two dimension sets: {earlier} and {published}"
                )
    return found


def _inside_function(tree: ast.AST, target: ast.Call) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(n is target for n in ast.walk(node)):
            return True
    return False


@pytest.fixture(scope="module")
def published() -> dict[str, Published]:
    return published_by_code()


def test_the_code_publishes_the_contract_metrics(published):
    # Every name of the enum is published somewhere, and nothing is published under a name outside it.
    assert set(published) == {name.value for name in MetricName}
    assert published["CapacityMode"].dimensions == {GROUP_DIMENSION, SERVICE_DIMENSION}
    assert published["GatewayRequests"].dimensions == {GROUP_DIMENSION, "Route", SERVICE_DIMENSION}


# --- what Powertools really emits ----------------------------------------------------------------------
def emf_records(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and '"_aws"' in line:
            records.append(json.loads(line))
    return records


def emitted(records: list[dict[str, Any]]) -> dict[str, tuple[str, frozenset[str], dict[str, str]]]:
    """metric name -> (namespace, dimension names, dimension values) from EMF records."""
    seen: dict[str, tuple[str, frozenset[str], dict[str, str]]] = {}
    for record in records:
        for directive in record["_aws"]["CloudWatchMetrics"]:
            for dimension_set in directive["Dimensions"]:
                values = {name: record[name] for name in dimension_set}
                for metric in directive["Metrics"]:
                    seen[metric["Name"]] = (directive["Namespace"], frozenset(dimension_set), values)
    return seen


def test_a_handler_emits_what_the_code_reading_says(stack, capacity, capsys, published):
    capsys.readouterr()
    capacity.invoke(schedule(capacity.clock.now()))
    out = emitted(emf_records(capsys.readouterr().out))
    for name in ("CapacityMode", "FallbackActive"):
        namespace, dimensions, values = out[name]
        assert namespace == NAMESPACE
        assert dimensions == published[name].dimensions
        assert values == {GROUP_DIMENSION: stack.group, SERVICE_DIMENSION: "spotkeeper"}


def test_the_gateway_emits_what_the_code_reading_says(capsys, published):
    settings = GatewaySettings.model_validate({"TGI_URL": "http://127.0.0.1:9", "GROUP_NAME": "spotkeeper-tgi"})
    record = RequestRecord(started=time.monotonic(), method="POST", route="/generate", status=200)
    record.first_token_at, record.tokens_out = record.started + 0.01, 3
    capsys.readouterr()
    publish(record, settings, ended=record.started + 0.05)
    out = emitted(emf_records(capsys.readouterr().out))
    for name in ("GatewayRequests", "GatewayErrors", "GatewayLatency", "TimeToFirstToken", "TokensOut"):
        namespace, dimensions, values = out[name]
        assert namespace == NAMESPACE and dimensions == published[name].dimensions, name
        assert values[GROUP_DIMENSION] == "spotkeeper-tgi" and values["Route"] == "/generate"


# --- what the template watches -------------------------------------------------------------------------
@dataclass(frozen=True)
class Watched:
    where: str
    namespace: str
    name: str
    dimensions: dict[str, str]
    partial: bool = False  # a SEARCH expression: the dimensions it names are a subset


def _alarm_metrics(logical_id: str, alarm: dict[str, Any]) -> Iterator[Watched]:
    if "MetricName" in alarm:
        dimensions = {d["Name"]: d["Value"] for d in alarm.get("Dimensions", [])}
        yield Watched(logical_id, alarm["Namespace"], alarm["MetricName"], dimensions)
    for query in alarm.get("Metrics", []):
        if "MetricStat" in query:
            metric = query["MetricStat"]["Metric"]
            dimensions = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
            yield Watched(f"{logical_id}.{query['Id']}", metric["Namespace"], metric["MetricName"], dimensions)
        elif "Expression" in query:
            yield from _search_metrics(f"{logical_id}.{query['Id']}", query["Expression"])


_SEARCH = re.compile(r"SEARCH\(\s*'(?P<query>[^']*)'")
_TERM = re.compile(r'(?P<key>[A-Za-z][\w.-]*)\s*=\s*\\?"(?P<value>[^"\\]*)\\?"')


def _search_metrics(where: str, expression: str) -> Iterator[Watched]:
    for search in _SEARCH.finditer(expression):
        terms = {m.group("key"): m.group("value") for m in _TERM.finditer(search.group("query"))}
        namespace, name = terms.pop("Namespace", None), terms.pop("MetricName", None)
        assert namespace and name, f"{where}: a SEARCH must name its namespace and metric: {search.group(0)}"
        yield Watched(where, namespace, name, terms, partial=True)


def _dashboard_metrics(body: dict[str, Any]) -> Iterator[Watched]:
    for index, widget in enumerate(body["widgets"]):
        where = f"Dashboard widget {index} ({widget['properties'].get('title', widget['type'])})"
        previous: list[Any] | None = None
        for line in widget["properties"].get("metrics", []):
            if line and isinstance(line[0], dict):
                yield from _search_metrics(where, line[0].get("expression", ""))
                continue
            fields = [item for item in line if not isinstance(item, dict)]
            if fields and fields[0] == "...":
                assert previous is not None, f"{where}: '...' with no metric before it"
                fields = previous
            elif previous is not None and len(fields) < len(previous):
                # Dashboard shorthand: "." repeats the previous line's value at that position.
                fields = [prev if item == "." else item for item, prev in zip(fields, previous, strict=False)]
            previous = fields
            namespace, name, *pairs = fields
            assert len(pairs) % 2 == 0, f"{where}: dimensions come in name/value pairs: {line}"
            yield Watched(where, namespace, name, dict(zip(pairs[::2], pairs[1::2], strict=True)))


def watched_by_template(stack: Stack) -> list[Watched]:
    template = stack.template
    watched: list[Watched] = []
    for logical_id, resource in template["Resources"].items():
        if not stack.resource_exists(logical_id):
            continue
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            watched.extend(_alarm_metrics(logical_id, stack.resolve(resource["Properties"])))
        elif resource["Type"] == "AWS::CloudWatch::Dashboard":
            body = json.loads(stack.resolve(resource["Properties"]["DashboardBody"]))
            watched.extend(_dashboard_metrics(body))
    return watched


def function_environment(stack: Stack) -> dict[str, Any]:
    return stack.resolve(stack.template["Globals"]["Function"]["Environment"]["Variables"])


DEPLOYMENTS = {
    "create": {},
    "attach": {
        "Mode": "attach",
        "ExistingGroupName": "ops-tgi",
        "ExistingEipAllocationId": "eipalloc-0123456789abcdef0",
    },
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.mark.parametrize("mode", sorted(DEPLOYMENTS))
def test_alarms_and_dashboard_watch_metrics_the_code_publishes(template, published, mode):
    stack = Stack(template, parameters=DEPLOYMENTS[mode])
    environment = function_environment(stack)
    group, service = environment["GROUP_NAME"], environment["POWERTOOLS_SERVICE_NAME"]
    assert environment["POWERTOOLS_METRICS_NAMESPACE"] == NAMESPACE
    watched = watched_by_template(stack)
    ours = [w for w in watched if w.namespace == NAMESPACE]
    assert ours, "no alarm or dashboard widget watches a spotkeeper metric"
    for metric in watched:
        assert metric.namespace == NAMESPACE or metric.namespace.startswith("AWS/"), metric
    for metric in ours:
        assert metric.name in published, f"{metric.where} watches {metric.name}, which no code publishes"
        dimensions = set(metric.dimensions)
        expected = published[metric.name].dimensions
        if metric.partial:
            assert dimensions <= expected, f"{metric.where}: {metric.name} has no dimension {dimensions - expected}"
        else:
            assert dimensions == expected, (
                f"{metric.where}: {metric.name} is published with {sorted(expected)}, watched with {sorted(dimensions)}"
            )
        if GROUP_DIMENSION in metric.dimensions:
            assert metric.dimensions[GROUP_DIMENSION] == group, metric
        if SERVICE_DIMENSION in metric.dimensions:
            assert metric.dimensions[SERVICE_DIMENSION] == service, metric
    # The alarms the capacity function acts on and the dashboard's headline graphs are among them
    names = {metric.name for metric in ours}
    assert {"Healthy", "CapacityMode", "ProbeLatency", "QueueSize", "Interruptions", "GatewayRequests"} <= names


def test_no_function_publishes_under_another_service_name(template):
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        variables = resource["Properties"].get("Environment", {}).get("Variables", {})
        assert "POWERTOOLS_SERVICE_NAME" not in variables, f"{logical_id} changes the service dimension"
        assert "POWERTOOLS_METRICS_NAMESPACE" not in variables, f"{logical_id} changes the namespace"


def test_the_reading_catches_a_wrong_dimension_set(template, published):
    # The check itself can fail: the endpoint-down alarm without its service dimension is caught.
    stack = Stack(template)
    alarm = stack.resolve(template["Resources"]["EndpointDownAlarm"]["Properties"])
    alarm["Dimensions"] = [d for d in alarm["Dimensions"] if d["Name"] != SERVICE_DIMENSION]
    [metric] = _alarm_metrics("EndpointDownAlarm", alarm)
    assert set(metric.dimensions) != published[metric.name].dimensions
    # ... and so is an alarm on a metric name nobody publishes.
    alarm["MetricName"] = "HealthyCount"
    [metric] = _alarm_metrics("EndpointDownAlarm", alarm)
    assert metric.name not in published
