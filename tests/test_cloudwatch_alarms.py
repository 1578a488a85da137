"""The CloudWatch alarm stand-in (spotkeeper_local.cloudwatch_alarms) evaluates as CloudWatch documents it.

- ``decide`` plays the example tables of the CloudWatch User Guide, "Configuring how CloudWatch alarms treat
  missing data" (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/alarms-and-missing-data.html;
  the same tables in awsdocs/amazon-cloudwatch-user-guide doc_source/AlarmThatSendsEmail.md): the current
  revision's two tables, plus the rows an earlier revision had and the current one dropped.
- The evaluator runs the template's own alarms (translated by SAM, resolved for a stack named ``spotkeeper``) on
  metrics published through Powertools' EMF and on the AWS metrics the drill records, and the events it puts on
  the bus are routed by the template's rule (moto's EventBridge matcher) and parsed by the capacity function's
  own event model.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.events.models import EventPattern

from spotkeeper.events import AlarmStateChange, parse_event
from spotkeeper_local.cloudwatch_alarms import (
    ALARM,
    INSUFFICIENT_DATA,
    OK,
    AlarmDefinition,
    AlarmDefinitionError,
    AlarmEvaluator,
    EmfTap,
    MetricKey,
    MetricQuery,
    StackAlarms,
    StackNames,
    alarms_from_template,
    decide,
    emf_datapoints,
)
from spotkeeper_local.embedded_aws import translate
from tests.cfn import EVENTS_DIR, STACK_NAME, Stack, load_template, stack_rules

GROUP = f"{STACK_NAME}-tgi"
DLQ_NAME = f"{STACK_NAME}-dlq"
T0 = 1_800_000_000.0  # on a minute boundary
MODES = ("missing", "ignore", "breaching", "notBreaching")
RETAIN = "retain"


# --------------------------------------------------------------------------------------------------------------
# The guide's tables
# --------------------------------------------------------------------------------------------------------------
def _points(row: str) -> list[bool | None]:
    """A row as the guide writes it, oldest first: 0 not breaching, X breaching, - missing."""
    return [{"0": False, "X": True, "-": None}[symbol] for symbol in row.split()]


# (data points, EvaluationPeriods, DatapointsToAlarm, states for missing / ignore / breaching / notBreaching)
GUIDE_TABLES = [
    # Datapoints to Alarm and Evaluation Periods both 3, evaluation range 5.
    ("0 - X - X", 3, 3, (OK, OK, OK, OK)),
    ("0 - - - -", 3, 3, (OK, OK, OK, OK)),
    ("- - - - -", 3, 3, (INSUFFICIENT_DATA, RETAIN, ALARM, OK)),
    ("0 X X - X", 3, 3, (ALARM, ALARM, ALARM, ALARM)),
    ("- - X - -", 3, 3, (ALARM, RETAIN, ALARM, OK)),  # premature alarm state: old enough
    # 2 out of 3.
    ("0 - X - X", 3, 2, (ALARM, ALARM, ALARM, ALARM)),
    ("0 0 X 0 X", 3, 2, (ALARM, ALARM, ALARM, ALARM)),
    ("0 - X - -", 3, 2, (OK, OK, ALARM, OK)),
    ("- - - - 0", 3, 2, (OK, OK, ALARM, OK)),
    ("- - - X -", 3, 2, (ALARM, RETAIN, ALARM, OK)),
    # The earlier revision's rows.
    ("- - - - X", 3, 3, (INSUFFICIENT_DATA, RETAIN, ALARM, OK)),
    ("X - - - -", 3, 3, (ALARM, RETAIN, ALARM, OK)),
    ("- - - - X", 3, 2, (INSUFFICIENT_DATA, RETAIN, ALARM, OK)),
]


@pytest.mark.parametrize(
    ("row", "n", "m", "expected"), GUIDE_TABLES, ids=[f"{r[0]} {r[2]}of{r[1]}" for r in GUIDE_TABLES]
)
def test_decide_plays_the_guides_tables(row: str, n: int, m: int, expected: tuple[str, ...]) -> None:
    # Given a row of the guide / When each way of treating missing data decides / Then the guide's state
    for mode, state in zip(MODES, expected, strict=True):
        decision = decide(_points(row), n, m, mode)
        assert decision.state == (None if state == RETAIN else state), mode


def test_premature_alarm_waits_until_the_breach_is_m_periods_old() -> None:
    # Given one breaching datapoint and nothing since / Then missing data holds it back until it is 3 periods old
    states = [decide(_points(row), 3, 3, "missing").state for row in ("- - - - X", "- - - X -", "- - X - -")]
    assert states == [INSUFFICIENT_DATA, INSUFFICIENT_DATA, ALARM]


def test_missing_data_is_filled_only_as_often_as_needed() -> None:
    # Given two real datapoints among three gaps, 3 of 3 / Then one gap is filled, and one breach is not enough
    decision = decide(_points("0 - X - -"), 3, 3, "breaching")
    assert (decision.state, decision.filled, decision.breaching, decision.evaluated) == (OK, 1, 2, (0, 2))


def test_enough_real_datapoints_make_the_treatment_irrelevant() -> None:
    # Given three real datapoints in the range / Then every treatment evaluates the most recent three alone
    for mode in MODES:
        decision = decide(_points("X - X - X"), 3, 3, mode)
        assert (decision.state, decision.filled, decision.evaluated) == (ALARM, 0, (0, 2, 4)), mode


# --------------------------------------------------------------------------------------------------------------
# The evaluator on synthetic alarms: each TreatMissingData over time, M of N
# --------------------------------------------------------------------------------------------------------------
KEY = MetricKey.of("Test", "Value", {"Name": "x"})


def _alarm(treat: str, n: int = 3, m: int = 3, name: str = "test-alarm") -> AlarmDefinition:
    return AlarmDefinition(
        name=name,
        description="test",
        queries=(MetricQuery("m1", KEY, "Maximum", 60),),
        period=60,
        evaluation_periods=n,
        datapoints_to_alarm=m,
        threshold=1.0,
        comparison="LessThanThreshold",
        treat_missing_data=treat,
    )


def _play(evaluator: AlarmEvaluator, minutes: list[float | None], publish: Callable[[float, float], None]) -> list[str]:
    """One value (or nothing) per minute from T0; the state after each minute's evaluation."""
    states = []
    for minute, value in enumerate(minutes):
        if value is not None:
            publish(T0 + minute * 60 + 5, value)
        evaluator.due(T0 + (minute + 1) * 60)
        states.append(evaluator.state("test-alarm"))
    return states


def _evaluator(alarm: AlarmDefinition) -> tuple[AlarmEvaluator, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    return AlarmEvaluator([alarm], events.append, created_at=T0), events


@pytest.mark.parametrize(
    ("treat", "expected"),
    [
        # 1 1 1 then nothing: breaching needs the last real datapoint out of the 5-period range.
        ("breaching", [OK, OK, OK, OK, OK, OK, OK, ALARM]),
        ("notBreaching", [OK, OK, OK, OK, OK, OK, OK, OK]),
        ("missing", [OK, OK, OK, OK, OK, OK, OK, INSUFFICIENT_DATA]),
        ("ignore", [OK, OK, OK, OK, OK, OK, OK, OK]),
    ],
)
def test_a_metric_that_stops(treat: str, expected: list[str]) -> None:
    # Given an alarm on a healthy metric / When the metric stops / Then each treatment of missing data decides
    evaluator, _ = _evaluator(_alarm(treat))
    minutes: list[float | None] = [1.0, 1.0, 1.0, None, None, None, None, None]
    assert _play(evaluator, minutes, lambda at, v: evaluator.record("Test", "Value", {"Name": "x"}, at, v)) == expected


def test_ignore_keeps_alarm_through_a_gap_and_real_data_ends_it() -> None:
    # Given an ignore alarm in ALARM / When the metric stops, then reports healthy / Then ALARM holds, then OK
    evaluator, events = _evaluator(_alarm("ignore"))
    minutes: list[float | None] = [0.0, 0.0, 0.0, None, None, None, None, None, 1.0, 1.0, 1.0]
    states = _play(evaluator, minutes, lambda at, v: evaluator.record("Test", "Value", {"Name": "x"}, at, v))
    assert states == [INSUFFICIENT_DATA, INSUFFICIENT_DATA, ALARM, ALARM, ALARM, ALARM, ALARM, ALARM, OK, OK, OK]
    assert [(e["detail"]["previousState"]["value"], e["detail"]["state"]["value"]) for e in events] == [
        (INSUFFICIENT_DATA, ALARM),
        (ALARM, OK),
    ]


def test_m_out_of_n_alarms_on_non_consecutive_breaches() -> None:
    # Given 2 of 3 / When breaches alternate with healthy minutes / Then two breaches in any three minutes alarm
    evaluator, _ = _evaluator(_alarm("missing", n=3, m=2))
    minutes: list[float | None] = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    states = _play(evaluator, minutes, lambda at, v: evaluator.record("Test", "Value", {"Name": "x"}, at, v))
    assert states == [OK, OK, OK, ALARM, OK, OK, OK]


def test_evaluations_run_every_minute_on_the_minute_and_catch_up() -> None:
    # Given an alarm created mid-minute / When time jumps 3 minutes / Then 3 evaluations ran, on the minutes
    evaluator = AlarmEvaluator([_alarm("breaching")], lambda event: None, created_at=T0 + 17)
    evaluator.due(T0 + 59)
    assert evaluator.transitions == []
    evaluator.due(T0 + 185)
    assert [t.at for t in evaluator.transitions] == [T0 + 60]  # ALARM at the first (all missing, breaching)
    assert evaluator.next_evaluation() == T0 + 240


# --------------------------------------------------------------------------------------------------------------
# The template's alarms
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sam_template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def translated(sam_template: dict[str, Any]) -> dict[str, Any]:
    return translate(sam_template)


def _function_names(translated: dict[str, Any]) -> dict[str, str]:
    return {k: f"fn-{k}" for k, v in translated["Resources"].items() if v["Type"] == "AWS::Lambda::Function"}


def _names(translated: dict[str, Any], **parameters: str) -> StackNames:
    return StackNames(
        STACK_NAME,
        parameters=parameters,
        refs=_function_names(translated),
        attributes={"DeadLetterQueue.QueueName": DLQ_NAME},
    )


@pytest.fixture(scope="module")
def alarms(translated: dict[str, Any]) -> dict[str, AlarmDefinition]:
    return {alarm.logical_id: alarm for alarm in alarms_from_template(translated, _names(translated))}


def test_every_alarm_of_the_template_is_read(translated: dict[str, Any], alarms: dict[str, AlarmDefinition]) -> None:
    declared = {k for k, v in translated["Resources"].items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    assert set(alarms) == declared and declared


def test_endpoint_down_alarm_is_resolved_for_the_stack(alarms: dict[str, AlarmDefinition]) -> None:
    alarm = alarms["EndpointDownAlarm"]
    assert alarm.name == f"{STACK_NAME}-endpoint-down"
    assert alarm.queries[0].metric == MetricKey.of(
        "Spotkeeper", "Healthy", {"AutoScalingGroupName": GROUP, "service": "spotkeeper"}
    )
    assert (alarm.queries[0].stat, alarm.period, alarm.evaluation_periods, alarm.datapoints_to_alarm) == (
        "Maximum",
        60,
        3,
        3,
    )
    assert (alarm.threshold, alarm.comparison, alarm.treat_missing_data) == (1.0, "LessThanThreshold", "breaching")


def test_parameters_and_attach_mode_reach_the_definitions(translated: dict[str, Any]) -> None:
    # Given attach mode and a 5-minute endpoint-down parameter / Then the alarm watches that group for 5 minutes
    names = _names(translated, Mode="attach", ExistingGroupName="their-group", EndpointDownMinutes="5")
    alarm = next(a for a in alarms_from_template(translated, names) if a.logical_id == "EndpointDownAlarm")
    assert dict(alarm.queries[0].metric.dimensions)["AutoScalingGroupName"] == "their-group"  # type: ignore[union-attr]
    assert (alarm.evaluation_periods, alarm.datapoints_to_alarm) == (5, 5)


def test_function_errors_alarm_is_metric_math_over_every_function(
    translated: dict[str, Any], alarms: dict[str, AlarmDefinition]
) -> None:
    alarm = alarms["FunctionErrorsAlarm"]
    watched = {q.metric for q in alarm.queries if q.metric is not None}
    assert watched == {
        MetricKey.of("AWS/Lambda", "Errors", {"FunctionName": f}) for f in _function_names(translated).values()
    }
    assert not alarm.single_metric and [q.id for q in alarm.queries if q.return_data] == ["errors"]


def test_unresolvable_names_fail_loudly(translated: dict[str, Any]) -> None:
    with pytest.raises(AlarmDefinitionError, match=r"DeadLetterQueue\.QueueName"):
        alarms_from_template(translated, StackNames(STACK_NAME, refs=_function_names(translated)))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"DatapointsToAlarm": 4}, "DatapointsToAlarm"),
        ({"TreatMissingData": "sometimes"}, "TreatMissingData"),
        ({"Period": 90}, "Period 90"),
        ({"Period": 3600, "EvaluationPeriods": 25, "DatapointsToAlarm": 1}, "one day"),
        ({"ComparisonOperator": "LessThanLowerOrGreaterThanUpperThreshold"}, "ComparisonOperator"),
        ({"ExtendedStatistic": "p99"}, "Statistic and ExtendedStatistic"),
    ],
)
def test_alarms_aws_would_reject_are_rejected(translated: dict[str, Any], change: dict[str, Any], problem: str) -> None:
    # PutMetricAlarm: Period 10, 20, 30 or a multiple of 60; EvaluationPeriods x Period at most a day;
    # DatapointsToAlarm at most EvaluationPeriods; one of Statistic and ExtendedStatistic.
    template = json.loads(json.dumps(translated))
    template["Resources"]["EndpointDownAlarm"]["Properties"].update(change)
    with pytest.raises(AlarmDefinitionError, match=problem):
        alarms_from_template(template, _names(translated))


# --------------------------------------------------------------------------------------------------------------
# The template's alarms, evaluated
# --------------------------------------------------------------------------------------------------------------
def _stack_evaluator(alarms: dict[str, AlarmDefinition]) -> tuple[AlarmEvaluator, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    return AlarmEvaluator(alarms.values(), events.append, created_at=T0), events


def _probe(evaluator: AlarmEvaluator, at: float, healthy: bool) -> None:
    """The health function's metrics, published the way it publishes them: Powertools' EMF on stdout."""
    from spotkeeper.handlers import tag_metrics
    from spotkeeper.observability import MetricName, metrics

    tap = EmfTap(io.StringIO(), lambda document: evaluator.record_emf(document, at))
    with contextlib.redirect_stdout(tap):  # type: ignore[type-var]
        tag_metrics(GROUP)
        metrics.add_metric(name=MetricName.HEALTHY, unit="Count", value=1 if healthy else 0)
        metrics.add_metric(name=MetricName.CAPACITY_MODE, unit="Count", value=0)
        metrics.flush_metrics()


def _transitions(evaluator: AlarmEvaluator, alarm: str) -> list[tuple[float, str, str]]:
    return [(t.at - T0, t.previous, t.state) for t in evaluator.transitions if t.alarm == alarm]


ENDPOINT_DOWN = f"{STACK_NAME}-endpoint-down"


def test_endpoint_down_fires_three_minutes_after_the_probe_reports_unhealthy(
    alarms: dict[str, AlarmDefinition],
) -> None:
    # Given the probe healthy for 5 minutes / When it reports unhealthy from minute 5, healthy again at 10
    evaluator, _ = _stack_evaluator(alarms)
    for minute in range(14):
        _probe(evaluator, T0 + minute * 60 + 1, healthy=not 5 <= minute < 10)
        evaluator.due(T0 + (minute + 1) * 60)
    # Then ALARM at the end of the third unhealthy minute, OK at the end of the first healthy one
    assert _transitions(evaluator, ENDPOINT_DOWN) == [(60, INSUFFICIENT_DATA, OK), (480, OK, ALARM), (660, ALARM, OK)]


def test_endpoint_down_fires_when_the_probe_goes_silent_and_recovers_on_its_return(
    alarms: dict[str, AlarmDefinition],
) -> None:
    # Given the probe healthy for 5 minutes / When it stops publishing (missing data is breaching), then returns
    evaluator, _ = _stack_evaluator(alarms)
    for minute in range(16):
        if not 5 <= minute < 12:
            _probe(evaluator, T0 + minute * 60 + 1, healthy=True)
        evaluator.due(T0 + (minute + 1) * 60)
    # Then ALARM once the last healthy datapoint left the 5-period evaluation range (5 minutes of silence, the
    # guide's "0 - - - -" row), OK at the end of the first minute it reports again
    assert _transitions(evaluator, ENDPOINT_DOWN) == [(60, INSUFFICIENT_DATA, OK), (600, OK, ALARM), (780, ALARM, OK)]
    summaries = [t.summary for t in evaluator.transitions if t.alarm == ENDPOINT_DOWN]
    assert summaries[1:] == [
        "3 of 3 datapoints breaching, 3 to alarm (3 missing treated as breaching)",
        "2 of 3 datapoints breaching, 3 to alarm (2 missing treated as breaching)",
    ]


def test_endpoint_down_alarms_on_a_stack_whose_probe_never_reported(alarms: dict[str, AlarmDefinition]) -> None:
    # Given a new stack and no Healthy datapoint yet / Then the first evaluation already finds 3 breaching periods
    evaluator, _ = _stack_evaluator(alarms)
    evaluator.due(T0 + 60)
    assert _transitions(evaluator, ENDPOINT_DOWN) == [(60, INSUFFICIENT_DATA, ALARM)]


def test_dlq_alarm_follows_the_queue_depth(alarms: dict[str, AlarmDefinition]) -> None:
    evaluator, _ = _stack_evaluator(alarms)
    for minute, depth in enumerate([0, 0, 1, 1, 0]):
        evaluator.record_queue_depth(DLQ_NAME, T0 + minute * 60, depth)
        evaluator.due(T0 + (minute + 1) * 60)
    name = f"{STACK_NAME}-dlq-not-empty"
    assert _transitions(evaluator, name) == [(60, INSUFFICIENT_DATA, OK), (180, OK, ALARM), (300, ALARM, OK)]


def test_function_errors_alarm_counts_any_functions_errors(
    translated: dict[str, Any], alarms: dict[str, AlarmDefinition]
) -> None:
    # Given invocations of two functions / When one raises in minute 2 / Then ALARM for that minute only
    evaluator, _ = _stack_evaluator(alarms)
    capacity, health = _function_names(translated)["CapacityFunction"], _function_names(translated)["HealthFunction"]
    for minute in range(4):
        evaluator.record_invocation(health, T0 + minute * 60 + 2, error=False)
        if minute == 2:
            evaluator.record_invocation(capacity, T0 + minute * 60 + 7, error=True)
        evaluator.due(T0 + (minute + 1) * 60)
    name = f"{STACK_NAME}-function-errors"
    assert _transitions(evaluator, name) == [(60, INSUFFICIENT_DATA, OK), (180, OK, ALARM), (240, ALARM, OK)]
    alarm_reason = next(t.reason for t in evaluator.transitions if t.alarm == name and t.state == ALARM)
    assert alarm_reason.startswith("Threshold Crossed: 1 out of the last 1 datapoints [1.0 (")


# --------------------------------------------------------------------------------------------------------------
# The event
# --------------------------------------------------------------------------------------------------------------
def _endpoint_down_event(alarms: dict[str, AlarmDefinition]) -> dict[str, Any]:
    evaluator, events = _stack_evaluator(alarms)
    for minute in range(6):
        _probe(evaluator, T0 + minute * 60 + 1, healthy=minute < 3)
        evaluator.due(T0 + (minute + 1) * 60)
    return next(
        e for e in events if e["detail"]["alarmName"] == ENDPOINT_DOWN and e["detail"]["state"]["value"] == ALARM
    )


def test_state_change_event_reaches_exactly_the_capacity_functions_alarm_rule(
    sam_template: dict[str, Any], alarms: dict[str, AlarmDefinition]
) -> None:
    event = _endpoint_down_event(alarms)
    routes = {
        (rule.function, rule.event)
        for rule in stack_rules(Stack(sam_template))
        if rule.pattern and EventPattern.load(json.dumps(rule.pattern)).matches_event(event)
    }
    assert routes == {("CapacityFunction", "AlarmStateChange")}


def test_state_change_event_is_shaped_as_aws_delivers_it(alarms: dict[str, AlarmDefinition]) -> None:
    event = _endpoint_down_event(alarms)
    sample = json.loads((EVENTS_DIR / "alarm-endpoint-down.json").read_text())

    def shape(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: shape(value) for key, value in node.items() if key != "reasonData"}
        return type(node).__name__

    # the sample's previous state has no reasonData (an alarm that was never evaluated has none either)
    assert shape(event) == shape(sample)
    parsed = parse_event(event, AlarmStateChange)  # the capacity function's own model
    assert (parsed.detail.previous_state.value, parsed.detail.state.value) == (OK, ALARM)  # type: ignore[union-attr]
    state = event["detail"]["state"]
    assert state["reason"].startswith("Threshold Crossed: 3 out of the last 3 datapoints [0.0 (")
    assert state["reason"].endswith(
        "were less than the threshold (1.0) (minimum 3 datapoints for OK -> ALARM transition)."
    )
    data = json.loads(state["reasonData"])
    assert (data["statistic"], data["period"], data["threshold"], data["recentDatapoints"]) == (
        "Maximum",
        60,
        1.0,
        [0.0, 0.0, 0.0],
    )
    assert event["detail"]["configuration"]["metrics"][0]["metricStat"]["metric"] == {
        "namespace": "Spotkeeper",
        "name": "Healthy",
        "dimensions": {"AutoScalingGroupName": GROUP, "service": "spotkeeper"},
    }
    assert event["resources"] == [f"arn:aws:cloudwatch:us-east-1:123456789012:alarm:{ENDPOINT_DOWN}"]


# --------------------------------------------------------------------------------------------------------------
# EMF
# --------------------------------------------------------------------------------------------------------------
def test_emf_publishes_each_metric_once_per_dimension_set() -> None:
    document = {
        "_aws": {
            "Timestamp": 1,
            "CloudWatchMetrics": [
                {
                    "Namespace": "Spotkeeper",
                    "Dimensions": [["service"], ["service", "route"]],
                    "Metrics": [{"Name": "GatewayLatency", "Unit": "Milliseconds"}],
                }
            ],
        },
        "service": "spotkeeper",
        "route": "generate",
        "GatewayLatency": [12.0, 14.5],
    }
    assert emf_datapoints(document) == [
        (MetricKey.of("Spotkeeper", "GatewayLatency", {"service": "spotkeeper"}), [12.0, 14.5]),
        (MetricKey.of("Spotkeeper", "GatewayLatency", {"service": "spotkeeper", "route": "generate"}), [12.0, 14.5]),
    ]


@pytest.mark.parametrize(
    "document",
    [
        {"message": "a log line"},
        {"_aws": {"CloudWatchMetrics": "no"}},
        {
            "_aws": {"CloudWatchMetrics": [{"Namespace": "N", "Dimensions": [["d"]], "Metrics": [{"Name": "x"}]}]},
            "x": 1,
        },
        {"_aws": {"CloudWatchMetrics": [{"Namespace": "N", "Dimensions": [[]], "Metrics": [{"Name": "x"}]}]}, "x": "1"},
    ],
    ids=["log line", "bad directives", "dimension value absent", "value not a number"],
)
def test_what_cloudwatch_would_not_read_as_emf_publishes_nothing(document: dict[str, Any]) -> None:
    assert emf_datapoints(document) == []


def test_tap_passes_everything_through_and_reads_whole_lines() -> None:
    out = io.StringIO()
    seen: list[dict[str, Any]] = []
    tap = EmfTap(out, seen.append)
    emf = '{"_aws": {"CloudWatchMetrics": []}, "x": 1}'
    for chunk in ("plain text\n", emf[:10], emf[10:], "\n", '{"not": "emf"}\n'):
        tap.write(chunk)
    assert out.getvalue() == f"plain text\n{emf}\n" + '{"not": "emf"}\n'
    assert seen == [json.loads(emf)]


# --------------------------------------------------------------------------------------------------------------
# Wired to a stack in moto
# --------------------------------------------------------------------------------------------------------------
def test_stack_alarms_read_the_deployed_names_and_the_functions_stdout(translated: dict[str, Any]) -> None:
    # Given a stack in moto with the template's dead-letter queue, and the alarms attached to it
    functions = {k: k.removesuffix("Function").lower() for k in _function_names(translated)}
    clock = [T0]
    events: list[dict[str, Any]] = []
    with mock_aws():
        session = boto3.session.Session(region_name="us-east-1")
        body = {"Resources": {"DeadLetterQueue": {"Type": "AWS::SQS::Queue", "Properties": {}}}}
        session.client("cloudformation").create_stack(StackName=STACK_NAME, TemplateBody=json.dumps(body))
        sqs = session.client("sqs")
        dlq = next(u for u in sqs.list_queues()["QueueUrls"] if "DeadLetterQueue" in u)
        stdout = sys.stdout
        alarms = StackAlarms.attach(session, translated, STACK_NAME, functions, events.append, lambda: clock[0], dlq)
        try:
            assert sys.stdout is not stdout
            # When the probe prints healthy metrics, the capacity function fails once, an event is dead-lettered
            for minute in range(3):
                clock[0] = T0 + minute * 60 + 1
                _print_probe(healthy=True)
                if minute == 1:
                    alarms.record_invocation("capacity", clock[0], error=True)
                    sqs.send_message(QueueUrl=dlq, MessageBody="{}")
                for second in range(2, 61):
                    alarms.tick(T0 + minute * 60 + second)
        finally:
            alarms.close()
        assert sys.stdout is stdout
    # Then every alarm was evaluated on them, and the errors and the dead letter raised theirs at minute 2
    states = {(t.alarm.removeprefix(f"{STACK_NAME}-"), t.at - T0, t.state) for t in alarms.evaluator.transitions}
    assert states == {
        ("endpoint-down", 60, OK),
        ("fallback-active", 60, OK),
        ("dlq-not-empty", 60, OK),
        ("function-errors", 60, OK),
        ("function-errors", 120, ALARM),
        ("dlq-not-empty", 120, ALARM),
        ("function-errors", 180, OK),
    }
    assert len(events) == len(states)


def _print_probe(healthy: bool) -> None:
    from spotkeeper.handlers import tag_metrics
    from spotkeeper.observability import MetricName, metrics

    tag_metrics(GROUP)
    metrics.add_metric(name=MetricName.HEALTHY, unit="Count", value=1 if healthy else 0)
    metrics.flush_metrics()
