"""CloudWatch alarm evaluation for the local world, which moto never does (its alarms never change state and
emit no events).

The template's own ``AWS::CloudWatch::Alarm`` resources are read after the SAM transform, with their
``Ref``/``Sub``/``GetAtt``/``If`` resolved to the deployed names, and evaluated on:

- the metrics the functions really publish: Powertools Metrics prints one Embedded Metric Format (EMF) JSON
  document per flush on stdout, and ``EmfTap`` reads them from there;
- the AWS metrics the alarms watch, recorded by the local runtime: ``AWS/Lambda Errors`` per function from each
  invocation's outcome, ``AWS/SQS ApproximateNumberOfMessagesVisible`` sampled once a minute. (No alarm of the
  template watches ``AWS/ApiGateway``; an alarm on a metric nobody records simply sees missing data.)

Every state change becomes the ``CloudWatch Alarm State Change`` event CloudWatch sends to EventBridge (shape:
events/alarm-endpoint-down.json and the CloudWatch User Guide's "Alarm events and EventBridge"), handed to
``deliver`` so the template's rule routes it to the capacity function. Alarm actions (the SNS notifications of
AlarmActions/OKActions) are not played.

How an alarm is evaluated is the CloudWatch User Guide's, "Alarm evaluation" and "Configuring how CloudWatch
alarms treat missing data" (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/alarm-evaluation.html,
https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/alarms-and-missing-data.html); ``decide`` encodes
it and tests/test_cloudwatch_alarms.py plays the guide's example tables:

- an alarm whose period is a minute or more is evaluated every minute, on the periods that end at that minute;
- CloudWatch retrieves more datapoints than EvaluationPeriods (N), the *evaluation range*. The guide does not
  publish its size; its examples use N + 2 (5 for N = 3), and so does this stand-in (``EXTRA_RANGE``);
- at least N real datapoints in the range: the most recent N of them are evaluated, TreatMissingData unused;
- fewer: all real datapoints are evaluated and the shortfall is filled per TreatMissingData (``breaching``,
  ``notBreaching``); ``missing`` and ``ignore`` fill nothing, and when nothing real decides the state the alarm
  goes to INSUFFICIENT_DATA (``missing``) or keeps its state (``ignore``), except for the guide's "premature alarm
  state" rule: the oldest real datapoint breaching, at least DatapointsToAlarm (M) periods old, nothing newer
  non-breaching, is ALARM under ``missing``;
- M or more breaching datapoints among those evaluated: ALARM, otherwise OK.
"""

from __future__ import annotations

import json
import math
import operator
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
EVALUATION_INTERVAL = 60.0  # "for any period of one minute or longer, an alarm is evaluated every minute"
EXTRA_RANGE = 2  # the evaluation range is EvaluationPeriods + 2 in the guide's examples
INITIAL_REASON = "Unchecked: Initial alarm creation"

OK, ALARM, INSUFFICIENT_DATA = "OK", "ALARM", "INSUFFICIENT_DATA"
TREAT_MISSING_DATA = ("missing", "ignore", "breaching", "notBreaching")
# The static-threshold operators; the LessThanLowerOrGreaterThanUpperThreshold family belongs to anomaly
# detection bands, which no alarm of the template uses.
COMPARISONS: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "GreaterThanOrEqualToThreshold": (operator.ge, "greater than or equal to"),
    "GreaterThanThreshold": (operator.gt, "greater than"),
    "LessThanThreshold": (operator.lt, "less than"),
    "LessThanOrEqualToThreshold": (operator.le, "less than or equal to"),
}
STATISTICS = ("SampleCount", "Average", "Sum", "Minimum", "Maximum")
_PERCENTILE = re.compile(r"p(\d{1,2}(?:\.\d+)?|100)")
# PutMetricAlarm: Period is 10, 20, 30 or a multiple of 60; EvaluationPeriods x Period at most one day.
HIGH_RESOLUTION_PERIODS = (10, 20, 30)
MAX_EVALUATION_SECONDS = 86400


class AlarmDefinitionError(ValueError):
    """An alarm of the template that CloudWatch would reject, or that this stand-in cannot evaluate."""


# --------------------------------------------------------------------------------------------------------------
# The decision (pure): CloudWatch's M-out-of-N with missing data
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    state: str | None  # None: the alarm keeps its current state (TreatMissingData ignore)
    evaluated: tuple[int, ...]  # indexes into the range of the real datapoints evaluated
    filled: int  # missing datapoints filled per TreatMissingData
    breaching: int  # breaching datapoints among those evaluated, fills included


def decide(points: Sequence[bool | None], evaluation_periods: int, datapoints_to_alarm: int, treat: str) -> Decision:
    """The state for one evaluation. ``points`` is the evaluation range, oldest first: True breaching, False not
    breaching, None missing."""
    n, m = evaluation_periods, datapoints_to_alarm
    real = [index for index, point in enumerate(points) if point is not None]
    if len(real) >= n:
        used = tuple(real[-n:])
        breaching = sum(1 for index in used if points[index])
        return Decision(ALARM if breaching >= m else OK, used, 0, breaching)
    shortfall = n - len(real)
    breaching_real = sum(1 for index in real if points[index])
    if treat == "breaching":
        breaching = breaching_real + shortfall
        return Decision(ALARM if breaching >= m else OK, tuple(real), shortfall, breaching)
    if treat == "notBreaching":
        return Decision(ALARM if breaching_real >= m else OK, tuple(real), shortfall, breaching_real)
    # missing / ignore: missing datapoints are not evaluated; real ones decide when they can.
    undecided = INSUFFICIENT_DATA if treat == "missing" else None
    if not real:
        return Decision(undecided, (), 0, 0)
    if breaching_real >= m:
        return Decision(ALARM, tuple(real), 0, breaching_real)
    if breaching_real < len(real):
        return Decision(OK, tuple(real), 0, breaching_real)
    # Every real datapoint breaches, fewer than M of them: "premature alarm state" avoidance.
    oldest_age = len(points) - real[0]
    if treat == "missing" and oldest_age >= m:
        return Decision(ALARM, tuple(real), 0, breaching_real)
    return Decision(undecided, tuple(real), 0, breaching_real)


# --------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricKey:
    """One CloudWatch metric: every distinct dimension set is a metric of its own."""

    namespace: str
    name: str
    dimensions: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, namespace: str, name: str, dimensions: dict[str, str] | None = None) -> MetricKey:
        return cls(namespace, name, tuple(sorted((dimensions or {}).items())))


class MetricStore:
    """Every sample recorded, by metric; statistics over a time window. Thread-safe (the gateway publishes
    from its server thread)."""

    def __init__(self) -> None:
        self._samples: dict[MetricKey, list[tuple[float, float]]] = {}
        self._lock = threading.Lock()

    def put(self, key: MetricKey, at: float, values: Iterable[float]) -> None:
        with self._lock:
            self._samples.setdefault(key, []).extend((at, float(value)) for value in values)

    def samples(self, key: MetricKey, start: float, end: float) -> list[float]:
        with self._lock:
            return [value for at, value in self._samples.get(key, ()) if start <= at < end]

    def keys(self) -> list[MetricKey]:
        with self._lock:
            return list(self._samples)


def statistic(values: Sequence[float], stat: str) -> float:
    """CloudWatch's statistic over one period's samples (there is at least one)."""
    if stat == "SampleCount":
        return float(len(values))
    if stat == "Sum":
        return math.fsum(values)
    if stat == "Average":
        return math.fsum(values) / len(values)
    if stat == "Minimum":
        return min(values)
    if stat == "Maximum":
        return max(values)
    match = _PERCENTILE.fullmatch(stat)
    if match is None:
        raise AlarmDefinitionError(f"statistic {stat!r} is not one this stand-in evaluates")
    ordered = sorted(values)
    rank = max(1, math.ceil(float(match.group(1)) / 100 * len(ordered)))  # nearest rank
    return ordered[rank - 1]


def emf_datapoints(document: Any) -> list[tuple[MetricKey, list[float]]]:
    """The metrics one Embedded Metric Format document publishes (one per metric and dimension set), or none when
    it is not a valid EMF document (CloudWatch drops those)."""
    if not isinstance(document, dict) or not isinstance(document.get("_aws"), dict):
        return []
    directives = document["_aws"].get("CloudWatchMetrics")
    if not isinstance(directives, list):
        return []
    published: list[tuple[MetricKey, list[float]]] = []
    for directive in directives:
        if not isinstance(directive, dict) or not isinstance(directive.get("Namespace"), str):
            continue
        dimension_sets = directive.get("Dimensions")
        if not isinstance(dimension_sets, list):
            continue
        for dimension_set in dimension_sets:
            if not isinstance(dimension_set, list) or any(not isinstance(document.get(d), str) for d in dimension_set):
                continue
            dimensions = {name: document[name] for name in dimension_set}
            for metric in directive.get("Metrics") or []:
                name = metric.get("Name") if isinstance(metric, dict) else None
                value = document.get(name) if isinstance(name, str) else None
                values = value if isinstance(value, list) else [value]
                if not values or any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
                    continue
                published.append((MetricKey.of(directive["Namespace"], name, dimensions), [float(v) for v in values]))
    return published


class EmfTap:
    """A stand-in for the Lambda log stream CloudWatch reads EMF from: writes pass through to ``stream``, and every
    complete line that is a JSON object goes to ``on_document``. Install it as ``sys.stdout``."""

    def __init__(self, stream: Any, on_document: Callable[[dict[str, Any]], None]) -> None:
        self._stream = stream
        self._on_document = on_document
        self._buffer = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        lines: list[str] = []
        with self._lock:
            self._buffer += text
            if "\n" in self._buffer:
                *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            line = line.strip()
            if line.startswith("{") and '"_aws"' in line:
                try:
                    document = json.loads(line)
                except ValueError:
                    continue
                if isinstance(document, dict):
                    self._on_document(document)
        return written if isinstance(written, int) else len(text)

    def flush(self) -> None:
        self._stream.flush()

    @property
    def stream(self) -> Any:
        return self._stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


# --------------------------------------------------------------------------------------------------------------
# Alarm definitions, from the template
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricQuery:
    """One entry of an alarm's metrics: a metric with its statistic, or a math expression over other entries."""

    id: str
    metric: MetricKey | None = None
    stat: str | None = None
    period: int | None = None
    expression: str | None = None
    label: str | None = None
    return_data: bool = True


@dataclass(frozen=True)
class AlarmDefinition:
    name: str
    description: str
    queries: tuple[MetricQuery, ...]  # one metric (id "m1") for a single-metric alarm
    period: int
    evaluation_periods: int
    datapoints_to_alarm: int
    threshold: float
    comparison: str
    treat_missing_data: str = "missing"
    single_metric: bool = True
    logical_id: str = ""

    @property
    def evaluation_range(self) -> int:
        return self.evaluation_periods + EXTRA_RANGE

    def breaches(self, value: float) -> bool:
        return COMPARISONS[self.comparison][0](value, self.threshold)


@dataclass
class StackNames:
    """What intrinsic functions resolve to in one deployment of the template.

    ``parameters`` are the values given (the template's defaults fill the others), ``refs`` the ``Ref`` of each
    resource, ``attributes`` the ``Fn::GetAtt`` values as ``"LogicalId.Attribute"``.
    """

    stack_name: str
    parameters: dict[str, str] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)
    account_id: str = ACCOUNT_ID
    region: str = REGION

    def pseudo(self) -> dict[str, str]:
        return {
            "AWS::StackName": self.stack_name,
            "AWS::AccountId": self.account_id,
            "AWS::Region": self.region,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
        }


def deployed_names(session: Any, stack_name: str, function_names: dict[str, str]) -> StackNames:
    """The names a stack deployed into the embedded AWS resolves to; ``function_names`` gives the names of the
    functions, which the local runtime plays (logical id -> the name their invocations are recorded under)."""
    cloudformation = session.client("cloudformation")
    stack = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
    parameters = {p["ParameterKey"]: p.get("ResolvedValue", p["ParameterValue"]) for p in stack.get("Parameters", [])}
    refs = dict(function_names)
    attributes: dict[str, str] = {}
    paginator = cloudformation.get_paginator("list_stack_resources")
    for page in paginator.paginate(StackName=stack_name):
        for resource in page["StackResourceSummaries"]:
            logical_id, physical = resource["LogicalResourceId"], resource.get("PhysicalResourceId", "")
            refs[logical_id] = physical
            if resource["ResourceType"] == "AWS::SQS::Queue":  # Ref is the URL
                queue_name = physical.rsplit("/", 1)[-1]
                attributes[f"{logical_id}.QueueName"] = queue_name
                attributes[f"{logical_id}.Arn"] = f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{queue_name}"
    return StackNames(stack_name, parameters, refs, attributes)


class _Resolver:
    def __init__(self, template: dict[str, Any], names: StackNames) -> None:
        self.template = template
        self.names = names
        self.values: dict[str, Any] = dict(names.pseudo())
        for name, spec in template.get("Parameters", {}).items():
            value = names.parameters.get(name, spec.get("Default"))
            if value is not None:
                self.values[name] = str(value)
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            self._conditions[name] = bool(self.resolve(self.template.get("Conditions", {})[name]))
        return self._conditions[name]

    def ref(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        if name in self.names.refs:
            return self.names.refs[name]
        raise AlarmDefinitionError(f"no value for Ref {name} in stack {self.names.stack_name}")

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.resolve(item) for item in node]
        if not isinstance(node, dict):
            return node
        if len(node) != 1:
            return {key: self.resolve(value) for key, value in node.items()}
        ((key, arg),) = node.items()
        if key == "Ref":
            return self.ref(arg)
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::GetAtt":
            logical_id, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
            address = f"{logical_id}.{attribute}"
            if address not in self.names.attributes:
                raise AlarmDefinitionError(f"no value for Fn::GetAtt {address} in stack {self.names.stack_name}")
            return self.names.attributes[address]
        if key == "Fn::Sub":
            text, local = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))

            def substitute(match: re.Match[str]) -> str:
                name = match.group(1)
                if name.startswith("!"):
                    return "${" + name[1:] + "}"
                if name in local:
                    return str(local[name])
                if "." in name:
                    return str(self.resolve({"Fn::GetAtt": name.split(".", 1)}))
                return str(self.ref(name))

            return re.sub(r"\$\{([^}]+)\}", substitute, text)
        if key == "Fn::If":
            name, when_true, when_false = arg
            return self.resolve(when_true if self.condition(name) else when_false)
        if key == "Fn::Equals":
            left, right = self.resolve(arg)
            return str(left) == str(right)
        if key == "Fn::Not":
            return not self.resolve(arg[0])
        if key == "Fn::And":
            return all(self.resolve(item) for item in arg)
        if key == "Fn::Or":
            return any(self.resolve(item) for item in arg)
        if key == "Fn::Join":
            separator, items = arg
            return separator.join(str(item) for item in self.resolve(items))
        if key == "Fn::Select":
            index, items = self.resolve(arg)
            return items[int(index)]
        if key == "Fn::Split":
            separator, text = self.resolve(arg)
            return str(text).split(separator)
        if key.startswith("Fn::"):
            raise AlarmDefinitionError(f"{key} is not resolved by this stand-in")
        return {key: self.resolve(arg)}


_ACTIONS = ("AlarmActions", "OKActions", "InsufficientDataActions")


def alarms_from_template(template: dict[str, Any], names: StackNames) -> list[AlarmDefinition]:
    """Every ``AWS::CloudWatch::Alarm`` of ``template`` (translated by SAM) that ``names``' deployment creates."""
    resolver = _Resolver(template, names)
    alarms = []
    for logical_id, resource in template.get("Resources", {}).items():
        if resource.get("Type") != "AWS::CloudWatch::Alarm":
            continue
        if "Condition" in resource and not resolver.condition(resource["Condition"]):
            continue
        # Alarm actions are not played: their targets need no resolving.
        evaluated = {k: v for k, v in resource.get("Properties", {}).items() if k not in _ACTIONS}
        properties = resolver.resolve(evaluated)
        alarms.append(_definition(logical_id, properties, names.stack_name))
    return alarms


def _definition(logical_id: str, p: dict[str, Any], stack_name: str) -> AlarmDefinition:
    def fail(problem: str) -> AlarmDefinitionError:
        return AlarmDefinitionError(f"alarm {logical_id}: {problem}")

    for unsupported in ("ThresholdMetricId",):
        if unsupported in p:
            raise fail(f"{unsupported} (anomaly detection) is not evaluated by this stand-in")
    name = str(p.get("AlarmName") or f"{stack_name}-{logical_id}")
    try:
        evaluation_periods = int(p["EvaluationPeriods"])
        datapoints_to_alarm = int(p.get("DatapointsToAlarm", evaluation_periods))
        threshold = float(p["Threshold"])
    except (KeyError, TypeError, ValueError) as error:
        raise fail(f"EvaluationPeriods, DatapointsToAlarm and Threshold must be numbers ({error})") from None
    comparison = str(p.get("ComparisonOperator", ""))
    if comparison not in COMPARISONS:
        raise fail(f"ComparisonOperator {comparison!r} is not one of {sorted(COMPARISONS)}")
    treat = str(p.get("TreatMissingData", "missing"))
    if treat not in TREAT_MISSING_DATA:
        raise fail(f"TreatMissingData {treat!r} is not one of {TREAT_MISSING_DATA}")
    if not 1 <= datapoints_to_alarm <= evaluation_periods:
        raise fail("DatapointsToAlarm must be between 1 and EvaluationPeriods")

    if "Metrics" in p:
        if any(key in p for key in ("MetricName", "Namespace", "Statistic", "ExtendedStatistic", "Dimensions")):
            raise fail("Metrics cannot be combined with MetricName, Namespace, Statistic or Dimensions")
        queries = tuple(_query(logical_id, entry) for entry in p["Metrics"])
        periods = {q.period for q in queries if q.metric is not None}
        if len(periods) != 1:
            raise fail("every metric of a math alarm must use the same period")
        period = periods.pop() or 0
        if sum(1 for q in queries if q.return_data) != 1:
            raise fail("exactly one entry of Metrics must have ReturnData true")
        single = False
    else:
        stat = p.get("ExtendedStatistic") or p.get("Statistic")
        if ("Statistic" in p) == ("ExtendedStatistic" in p):
            raise fail("exactly one of Statistic and ExtendedStatistic")
        if "Statistic" in p and stat not in STATISTICS:
            raise fail(f"Statistic {stat!r} is not one of {STATISTICS}")
        if "ExtendedStatistic" in p and not _PERCENTILE.fullmatch(str(stat)):
            raise fail(f"ExtendedStatistic {stat!r}: only percentiles (pNN) are evaluated by this stand-in")
        period = int(p.get("Period", 0))
        dimensions = {str(d["Name"]): str(d["Value"]) for d in p.get("Dimensions", [])}
        metric = MetricKey.of(str(p["Namespace"]), str(p["MetricName"]), dimensions)
        queries = (MetricQuery("m1", metric, str(stat), period),)
        single = True
    if period not in HIGH_RESOLUTION_PERIODS and (period <= 0 or period % 60):
        raise fail(f"Period {period} must be 10, 20, 30 or a multiple of 60")
    if period < 60:
        raise fail("high-resolution alarms (evaluated every 10 s) are not evaluated by this stand-in")
    if evaluation_periods * period > MAX_EVALUATION_SECONDS:
        raise fail("EvaluationPeriods x Period cannot exceed one day")
    return AlarmDefinition(
        name=name,
        description=str(p.get("AlarmDescription", "")),
        queries=queries,
        period=period,
        evaluation_periods=evaluation_periods,
        datapoints_to_alarm=datapoints_to_alarm,
        threshold=threshold,
        comparison=comparison,
        treat_missing_data=treat,
        single_metric=single,
        logical_id=logical_id,
    )


def _query(logical_id: str, entry: dict[str, Any]) -> MetricQuery:
    query_id = str(entry.get("Id", ""))
    if not re.fullmatch(r"[a-z][A-Za-z0-9_]*", query_id):
        raise AlarmDefinitionError(f"alarm {logical_id}: metric id {query_id!r} must start with a lowercase letter")
    return_data = bool(entry.get("ReturnData", True))
    if "Expression" in entry:
        return MetricQuery(
            query_id, expression=str(entry["Expression"]), label=entry.get("Label"), return_data=return_data
        )
    stat = entry["MetricStat"]
    metric = stat["Metric"]
    dimensions = {str(d["Name"]): str(d["Value"]) for d in metric.get("Dimensions", [])}
    return MetricQuery(
        query_id,
        MetricKey.of(str(metric["Namespace"]), str(metric["MetricName"]), dimensions),
        str(stat["Stat"]),
        int(stat["Period"]),
        label=entry.get("Label"),
        return_data=return_data,
    )


# --------------------------------------------------------------------------------------------------------------
# Metric math: the functions the template's alarms use
# --------------------------------------------------------------------------------------------------------------
Series = dict[int, float]  # period index in the evaluation range -> value (absent: missing)
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?)|([A-Za-z_][A-Za-z0-9_]*)|(.))")


def _tokens(expression: str) -> list[str]:
    tokens = []
    for number, name, symbol in _TOKEN.findall(expression):
        tokens.append(number or name or symbol)
    return [t for t in tokens if t.strip()]


class _Math:
    """A recursive-descent evaluator of metric math over the periods of one evaluation range."""

    FUNCTIONS = ("FILL", "SUM", "MAX", "MIN", "AVG")

    def __init__(self, expression: str, series: dict[str, Series], periods: int) -> None:
        self.tokens = _tokens(expression)
        self.position = 0
        self.series = series
        self.periods = periods
        self.expression = expression

    def evaluate(self) -> Series:
        value = self._sum()
        if self.position != len(self.tokens):
            raise AlarmDefinitionError(f"metric math {self.expression!r}: unexpected {self.tokens[self.position]!r}")
        if not isinstance(value, dict):
            raise AlarmDefinitionError(f"metric math {self.expression!r} must give a time series")
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> str:
        token = self._peek()
        if token is None or (expected is not None and token != expected):
            raise AlarmDefinitionError(f"metric math {self.expression!r}: expected {expected or 'more'}")
        self.position += 1
        return token

    def _sum(self) -> Any:
        value = self._product()
        while self._peek() in ("+", "-"):
            op = operator.add if self._take() == "+" else operator.sub
            value = self._combine(value, self._product(), op)
        return value

    def _product(self) -> Any:
        value = self._atom()
        while self._peek() in ("*", "/"):
            op = operator.mul if self._take() == "*" else _divide
            value = self._combine(value, self._atom(), op)
        return value

    def _atom(self) -> Any:
        symbol = self._take()
        if symbol == "(":
            value = self._sum()
            self._take(")")
            return value
        if symbol == "[":
            items = [self._sum()]
            while self._peek() == ",":
                self._take(",")
                items.append(self._sum())
            self._take("]")
            return items
        if re.fullmatch(r"\d+(?:\.\d*)?", symbol):
            return float(symbol)
        if self._peek() == "(":
            return self._call(symbol)
        if symbol not in self.series:
            raise AlarmDefinitionError(f"metric math {self.expression!r}: no metric with id {symbol!r}")
        return dict(self.series[symbol])

    def _call(self, name: str) -> Any:
        if name not in self.FUNCTIONS:
            raise AlarmDefinitionError(f"metric math function {name} is not evaluated by this stand-in")
        self._take("(")
        arguments = [self._sum()]
        while self._peek() == ",":
            self._take(",")
            arguments.append(self._sum())
        self._take(")")
        if name == "FILL":
            series, value = arguments
            if not isinstance(series, dict) or not isinstance(value, float):
                raise AlarmDefinitionError("FILL takes a time series and a number")
            return {index: series.get(index, value) for index in range(self.periods)}
        (argument,) = arguments
        members = argument if isinstance(argument, list) else [argument]
        if not all(isinstance(member, dict) for member in members):
            raise AlarmDefinitionError(f"{name} takes time series")
        reduce = {"SUM": math.fsum, "MAX": max, "MIN": min, "AVG": lambda v: math.fsum(v) / len(v)}[name]
        result: Series = {}
        for index in range(self.periods):
            present = [member[index] for member in members if index in member]
            if present:
                result[index] = float(reduce(present))
        return result

    @staticmethod
    def _combine(left: Any, right: Any, op: Callable[[float, float], float]) -> Any:
        if isinstance(left, float) and isinstance(right, float):
            return op(left, right)
        if isinstance(left, dict) and isinstance(right, dict):
            return {i: op(left[i], right[i]) for i in left if i in right and not _undefined(op, left[i], right[i])}
        if isinstance(left, dict):
            return {i: op(v, right) for i, v in left.items() if not _undefined(op, v, right)}
        if isinstance(right, dict):
            return {i: op(left, v) for i, v in right.items() if not _undefined(op, left, v)}
        raise AlarmDefinitionError("metric math: arrays can only be passed to functions")


def _divide(left: float, right: float) -> float:
    return left / right


def _undefined(op: Callable[[float, float], float], left: float, right: float) -> bool:
    return op is _divide and right == 0


# --------------------------------------------------------------------------------------------------------------
# The evaluator
# --------------------------------------------------------------------------------------------------------------
@dataclass
class AlarmStatus:
    value: str
    reason: str
    timestamp: float
    reason_data: str | None = None


@dataclass(frozen=True)
class AlarmTransition:
    at: float
    alarm: str
    previous: str
    state: str
    reason: str  # as CloudWatch words it in the event
    summary: str  # the same, short


@dataclass(frozen=True)
class _Datapoint:
    start: float  # the period's start
    value: float
    samples: int


class AlarmEvaluator:
    """The alarms of one stack, evaluated every minute on what was recorded; ``deliver(event)`` receives the
    ``CloudWatch Alarm State Change`` event of every transition (e.g. a put on the EventBridge bus)."""

    def __init__(
        self,
        alarms: Iterable[AlarmDefinition],
        deliver: Callable[[dict[str, Any]], Any],
        created_at: float,
        account_id: str = ACCOUNT_ID,
        region: str = REGION,
    ) -> None:
        self.alarms = {alarm.name: alarm for alarm in alarms}
        self.metrics = MetricStore()
        self.transitions: list[AlarmTransition] = []
        self._deliver = deliver
        self._account_id = account_id
        self._region = region
        self._status = {name: AlarmStatus(INSUFFICIENT_DATA, INITIAL_REASON, created_at) for name in self.alarms}
        self._next = math.floor(created_at / EVALUATION_INTERVAL) * EVALUATION_INTERVAL + EVALUATION_INTERVAL

    # recording --------------------------------------------------------------------------------------------
    def record(self, namespace: str, name: str, dimensions: dict[str, str], at: float, *values: float) -> None:
        self.metrics.put(MetricKey.of(namespace, name, dimensions), at, values)

    def record_emf(self, document: dict[str, Any], at: float) -> None:
        """One EMF document a function printed at ``at`` (its own ``_aws.Timestamp`` is wall-clock time, while
        the local world's time is simulated)."""
        for key, values in emf_datapoints(document):
            self.metrics.put(key, at, values)

    def record_invocation(self, function_name: str, at: float, error: bool) -> None:
        """AWS/Lambda: one Invocations sample, and Errors 1 for an invocation that raised (0 otherwise)."""
        dimensions = {"FunctionName": function_name}
        self.record("AWS/Lambda", "Invocations", dimensions, at, 1.0)
        self.record("AWS/Lambda", "Errors", dimensions, at, 1.0 if error else 0.0)

    def record_queue_depth(self, queue_name: str, at: float, visible: int) -> None:
        """AWS/SQS ApproximateNumberOfMessagesVisible, which SQS reports once a minute."""
        self.record("AWS/SQS", "ApproximateNumberOfMessagesVisible", {"QueueName": queue_name}, at, float(visible))

    # evaluating -------------------------------------------------------------------------------------------
    def state(self, alarm: str) -> str:
        return self._status[alarm].value

    def next_evaluation(self) -> float:
        return self._next

    def due(self, now: float) -> list[AlarmTransition]:
        """Every evaluation up to ``now`` (one a minute, on the minute) that has not run yet."""
        transitions: list[AlarmTransition] = []
        while self._next <= now:
            transitions.extend(self.evaluate(self._next))
            self._next += EVALUATION_INTERVAL
        return transitions

    def evaluate(self, at: float) -> list[AlarmTransition]:
        transitions = []
        for alarm in self.alarms.values():
            transition = self._evaluate(alarm, at)
            if transition is not None:
                transitions.append(transition)
        return transitions

    def _evaluate(self, alarm: AlarmDefinition, at: float) -> AlarmTransition | None:
        datapoints = self._datapoints(alarm, at)
        points = [None if d is None else alarm.breaches(d.value) for d in datapoints]
        decision = decide(points, alarm.evaluation_periods, alarm.datapoints_to_alarm, alarm.treat_missing_data)
        previous = self._status[alarm.name]
        if decision.state is None or decision.state == previous.value:
            return None
        reason, reason_data = self._reason(alarm, at, datapoints, decision, previous.value)
        status = AlarmStatus(decision.state, reason, at, reason_data)
        self._status[alarm.name] = status
        transition = AlarmTransition(at, alarm.name, previous.value, status.value, reason, _summary(alarm, decision))
        self.transitions.append(transition)
        self._deliver(self.state_change_event(alarm, previous, status))
        return transition

    def _datapoints(self, alarm: AlarmDefinition, at: float) -> list[_Datapoint | None]:
        """The evaluation range ending at ``at``, oldest first."""
        count, period = alarm.evaluation_range, alarm.period
        starts = [at - (count - index) * period for index in range(count)]
        series: dict[str, Series] = {}
        samples: dict[int, int] = {}
        for query in alarm.queries:
            if query.metric is None:
                continue
            values: Series = {}
            for index, start in enumerate(starts):
                window = self.metrics.samples(query.metric, start, start + period)
                if window:
                    values[index] = statistic(window, str(query.stat))
                    samples[index] = samples.get(index, 0) + len(window)
            series[query.id] = values
        for query in alarm.queries:
            if query.expression is not None:
                series[query.id] = _Math(query.expression, series, count).evaluate()
        returned = next(q for q in alarm.queries if q.return_data)
        result = series[returned.id]
        return [
            _Datapoint(start, result[index], samples.get(index, 0)) if index in result else None
            for index, start in enumerate(starts)
        ]

    # the event ---------------------------------------------------------------------------------------------
    def _reason(
        self,
        alarm: AlarmDefinition,
        at: float,
        datapoints: list[_Datapoint | None],
        decision: Decision,
        previous: str,
    ) -> tuple[str, str]:
        state = decision.state
        evaluated = [datapoints[index] for index in reversed(decision.evaluated)]  # newest first
        real = [d for d in evaluated if d is not None]
        reason_data: dict[str, Any] = {"version": "1.0", "queryDate": _stamp(at)}
        if real:
            reason_data["startDate"] = _stamp(real[-1].start)
        if alarm.single_metric:
            stat = str(alarm.queries[0].stat)
            reason_data["extendedStatistic" if _PERCENTILE.fullmatch(stat) else "statistic"] = stat
        reason_data["period"] = alarm.period
        reason_data["recentDatapoints"] = [d.value for d in reversed(real)]
        reason_data["threshold"] = alarm.threshold
        reason_data["evaluatedDatapoints"] = [
            {"timestamp": _stamp(d.start), "sampleCount": float(d.samples), "value": d.value} for d in real
        ]
        if state == INSUFFICIENT_DATA:
            unknown = sum(1 for d in datapoints if d is None)
            return f"Insufficient Data: {_count(unknown, 'datapoint')} {_was(unknown)} unknown.", _json(reason_data)
        n, m = alarm.evaluation_periods, alarm.datapoints_to_alarm
        treated = {"breaching": "Breaching", "notBreaching": "NonBreaching"}.get(alarm.treat_missing_data, "")
        if not real and decision.filled:
            reason = (
                f"Threshold Crossed: no datapoints were received for {_count(decision.filled, 'period')} and "
                f"{_count(decision.filled, 'missing datapoint')} {_was(decision.filled)} treated as [{treated}]."
            )
            return reason, _json(reason_data)
        phrase = COMPARISONS[alarm.comparison][1]
        if state == ALARM:
            shown = [d for d in real if alarm.breaches(d.value)]
            count, verb, minimum = decision.breaching, phrase, m
        else:
            shown = [d for d in real if not alarm.breaches(d.value)]
            count, verb, minimum = len(evaluated) + decision.filled - decision.breaching, f"not {phrase}", n - m + 1
        listed = ", ".join(f"{d.value!r} ({_short(d.start)})" for d in shown)
        filled = (
            f" and {_count(decision.filled, 'missing datapoint')} {_was(decision.filled)} treated as [{treated}]"
            if decision.filled
            else ""
        )
        reason = (
            f"Threshold Crossed: {count} out of the last {n} datapoints [{listed}] {_was(count)} {verb} "
            f"the threshold ({alarm.threshold!r}){filled} (minimum {_count(minimum, 'datapoint')} for "
            f"{previous} -> {state} transition)."
        )
        return reason, _json(reason_data)

    def state_change_event(self, alarm: AlarmDefinition, previous: AlarmStatus, status: AlarmStatus) -> dict[str, Any]:
        """The event CloudWatch sends to EventBridge for this transition."""

        def described(s: AlarmStatus) -> dict[str, Any]:
            state: dict[str, Any] = {"value": s.value, "reason": s.reason}
            if s.reason_data is not None:
                state["reasonData"] = s.reason_data
            state["timestamp"] = _stamp(s.timestamp)
            return state

        arn = f"arn:aws:cloudwatch:{self._region}:{self._account_id}:alarm:{alarm.name}"
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "CloudWatch Alarm State Change",
            "source": "aws.cloudwatch",
            "account": self._account_id,
            "time": datetime.fromtimestamp(status.timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": self._region,
            "resources": [arn],
            "detail": {
                "alarmName": alarm.name,
                "state": described(status),
                "previousState": described(previous),
                "configuration": {"description": alarm.description, "metrics": _configuration_metrics(alarm)},
            },
        }


def _summary(alarm: AlarmDefinition, decision: Decision) -> str:
    if decision.state == INSUFFICIENT_DATA:
        return "no datapoints to evaluate"
    n, m = alarm.evaluation_periods, alarm.datapoints_to_alarm
    text = f"{decision.breaching} of {n} datapoints breaching, {m} to alarm"
    if decision.filled:
        text += f" ({decision.filled} missing treated as {alarm.treat_missing_data})"
    return text


def _configuration_metrics(alarm: AlarmDefinition) -> list[dict[str, Any]]:
    metrics = []
    for query in alarm.queries:
        # A single-metric alarm's entry gets an id CloudWatch generates (a UUID); a stable one here.
        query_id = str(uuid.uuid5(uuid.NAMESPACE_URL, alarm.name)) if alarm.single_metric else query.id
        entry: dict[str, Any] = {"id": query_id}
        if query.expression is not None:
            entry["expression"] = query.expression
            if query.label is not None:
                entry["label"] = query.label
        else:
            assert query.metric is not None
            entry["metricStat"] = {
                "metric": {
                    "namespace": query.metric.namespace,
                    "name": query.metric.name,
                    "dimensions": dict(query.metric.dimensions),
                },
                "period": query.period,
                "stat": query.stat,
            }
        entry["returnData"] = query.return_data
        metrics.append(entry)
    return metrics


def _stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(at * 1000) % 1000:03d}+0000"


def _short(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%d/%m/%y %H:%M:%S")


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _was(number: int) -> str:
    return "was" if number == 1 else "were"


# --------------------------------------------------------------------------------------------------------------
# Wired to one stack of the local world
# --------------------------------------------------------------------------------------------------------------
def function_name(folder: str) -> str:
    """The name the local runtime gives the function in functions/<folder> (lambda_runtime's context)."""
    return f"spotkeeper-{folder}"


class StackAlarms:
    """The template's alarms of one stack deployed into the embedded AWS, evaluated on the local world's clock.

    ``attach`` reads the alarms and installs the EMF tap on ``sys.stdout`` (where Powertools prints); the world
    calls ``record_invocation`` after each invocation and ``tick(now)`` every simulated second: once a minute it
    samples the dead-letter queue's depth and evaluates. ``close`` takes the tap off again.
    """

    def __init__(self, evaluator: AlarmEvaluator, sqs: Any, dlq_url: str | None, tap: EmfTap | None = None) -> None:
        self.evaluator = evaluator
        self._sqs = sqs
        self._dlq_url = dlq_url
        self._tap = tap

    @classmethod
    def attach(
        cls,
        session: Any,
        template: dict[str, Any],
        stack_name: str,
        functions: dict[str, str],
        deliver: Callable[[dict[str, Any]], Any],
        now: Callable[[], float],
        dlq_url: str | None = None,
    ) -> StackAlarms:
        """``template`` is the translated template (its alarms, parameters and conditions); ``functions`` maps
        each function's logical id to its folder under functions/."""
        import sys

        names = deployed_names(session, stack_name, {k: function_name(folder) for k, folder in functions.items()})
        evaluator = AlarmEvaluator(alarms_from_template(template, names), deliver, created_at=now())
        tap = EmfTap(sys.stdout, lambda document: evaluator.record_emf(document, now()))
        sys.stdout = tap  # type: ignore[assignment]
        return cls(evaluator, session.client("sqs"), dlq_url, tap)

    def record_invocation(self, folder: str, at: float, error: bool) -> None:
        self.evaluator.record_invocation(function_name(folder), at, error)

    def tick(self, now: float) -> list[AlarmTransition]:
        if now < self.evaluator.next_evaluation():
            return []
        if self._dlq_url is not None:
            attributes = self._sqs.get_queue_attributes(
                QueueUrl=self._dlq_url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]
            # SQS reports the depth once a minute: the sample closes the minute being evaluated.
            at = self.evaluator.next_evaluation() - 0.001
            self.evaluator.record_queue_depth(
                self._dlq_url.rsplit("/", 1)[-1], at, int(attributes["ApproximateNumberOfMessages"])
            )
        return self.evaluator.due(now)

    def close(self) -> None:
        import sys

        if self._tap is not None and sys.stdout is self._tap:
            sys.stdout = self._tap.stream
        self._tap = None
