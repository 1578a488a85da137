"""``spotkeeper status`` against moto: a stack that serves, and one that does not."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from conftest import MODEL_ID
from control import control_deps_for, instance_ids

from spotkeeper.state import PendingLaunch
from spotkeeper_local.aws_events import spot_interruption
from spotkeeper_local.emulated_fleet import EmulatedInstances
from spotkeeper_local.lambda_runtime import invoke
from spotkeeper_local.lifecycle_hooks import LAUNCHING, GroupWatcher, LifecycleHooks
from spotkeeper_local.sim_clock import SimClock
from spotkeeper_ops.status import StackClients, run_status

STACK = "spotkeeper"


@pytest.fixture
def deployed(stack):
    """The endpoint's resources, behind a CloudFormation stack whose outputs name them as template.yaml's do."""
    outputs = {
        "GroupName": stack.group,
        "EipAllocationId": stack.eip_allocation_id,
        "StateTableName": stack.table_name,
        "AlertTopicArn": stack.topic_arn,
    }
    template = {
        "Resources": {"Placeholder": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {name: {"Value": value} for name, value in outputs.items()},
    }
    stack.session.client("cloudformation").create_stack(StackName=STACK, TemplateBody=json.dumps(template))
    clock = SimClock(start=dt.datetime(2026, 11, 26, 1, 0, tzinfo=dt.UTC).timestamp())
    hooks = LifecycleHooks()
    fleet = EmulatedInstances(stack.session.client("ec2"), MODEL_ID, clock, load_seconds=0.0)
    watcher = GroupWatcher(stack.session.client("autoscaling"), stack.group, hooks)
    deps = control_deps_for(stack, clock=clock, tgi=fleet.tgi_client(), hooks=hooks)
    [first] = instance_ids(stack)
    fleet.boot(first)
    assert invoke("lifecycle", watcher.lifecycle_event(first, LAUNCHING), deps, clock=clock)["outcome"] == "promoted"
    yield stack, clock, deps, first
    fleet.close()


def _healthy(stack, at: float, value: float) -> None:
    stack.session.client("cloudwatch").put_metric_data(
        Namespace="Spotkeeper",
        MetricData=[
            {
                "MetricName": "Healthy",
                "Dimensions": [
                    {"Name": "AutoScalingGroupName", "Value": stack.group},
                    {"Name": "service", "Value": "spotkeeper"},
                ],
                "Timestamp": dt.datetime.fromtimestamp(at, dt.UTC),
                "Value": value,
            }
        ],
    )


def _status(stack, clock, **kwargs) -> tuple[int, str]:
    printed: list[str] = []
    code = run_status(STACK, StackClients.from_session(stack.session), printed.append, clock=clock.now, **kwargs)
    return code, "\n".join(printed)


def test_status_of_a_serving_stack(deployed):
    stack, clock, deps, serving = deployed
    clock.advance(120)
    _healthy(stack, clock.now() - 30, 1)
    code, text = _status(stack, clock)
    assert code == 0, text
    assert f"serving   {serving} at " in text and "InService/Healthy; 0 failed probe(s)" in text
    address = stack.session.client("ec2").describe_addresses(AllocationIds=[stack.eip_allocation_id])["Addresses"][0]
    assert f"eip       {address['PublicIp']} -> {serving}" in text
    assert "capacity  spot since the deploy" in text
    assert "probe     Healthy=1" in text
    # the last alerts, as the functions recorded them
    assert f"[info] {serving} is serving: Elastic IP moved after TGI reported ready" in text
    assert text.splitlines()[-1] == "verdict   serving"


def test_status_of_a_degraded_stack_says_why(deployed):
    stack, clock, deps, serving = deployed
    # Given the serving instance is doomed, its replacement still loading, the EIP moved by hand, an alarm firing
    assert invoke("interruption", spot_interruption(serving), deps)["outcome"] == "replacement-started"
    replacement = next(i for i in instance_ids(stack) if i != serving)
    deps.state.put_pending_launch(
        stack.group,
        PendingLaunch(replacement, "spotkeeper-launch", "token", started_at=clock.now(), deadline=clock.now() + 1800),
    )
    stack.session.client("ec2").associate_address(
        AllocationId=stack.eip_allocation_id, InstanceId=replacement, AllowReassociation=True
    )
    cloudwatch = stack.session.client("cloudwatch")
    cloudwatch.put_metric_alarm(
        AlarmName=f"{STACK}-endpoint-down",
        Namespace="Spotkeeper",
        MetricName="Healthy",
        Statistic="Maximum",
        Period=60,
        EvaluationPeriods=3,
        Threshold=1,
        ComparisonOperator="LessThanThreshold",
    )
    cloudwatch.set_alarm_state(AlarmName=f"{STACK}-endpoint-down", StateValue="ALARM", StateReason="3 of 3 below 1")
    clock.advance(300)
    code, text = _status(stack, clock)
    # Then status exits 1 and names each problem
    assert code == 1
    assert f"launch    {replacement} waiting, started " in text and "(in 25 min)" in text
    assert f"ALARM     {STACK}-endpoint-down: 3 of 3 below 1" in text
    assert f"[warning] Spot interruption warning for {serving} (serving)" in text
    assert f"instance  {serving} InService Healthy (doomed)" in text
    verdict = text.splitlines()[-1]
    assert verdict.startswith("verdict   DEGRADED: ")
    assert f"Elastic IP is on {replacement}, not on the serving instance" in verdict
    assert f"alarm {STACK}-endpoint-down in ALARM" in verdict


def test_status_of_a_stack_that_does_not_exist(stack):
    clock = SimClock()
    code, text = _status(stack, clock)
    assert code == 2 and text.startswith("error: stack spotkeeper")


def test_watch_refreshes_until_stopped(deployed):
    stack, clock, deps, serving = deployed
    naps: list[float] = []
    code, text = _status(stack, clock, watch=True, interval=7, iterations=3, sleep=naps.append)
    assert code == 0
    assert naps == [7, 7] and text.count("verdict   serving") == 3


def test_an_alert_that_cannot_be_recorded_still_goes_out(stack):
    from botocore.exceptions import ClientError

    from spotkeeper.alerts import Alert, AlertPublisher
    from spotkeeper.state import StateStore

    class ThrottledTable:
        def put_item(self, **_):
            raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException"}}, "PutItem")

    store = StateStore(ThrottledTable())
    publisher = AlertPublisher(
        stack.session.client("sns"),
        stack.topic_arn,
        stack.group,
        record=lambda alert: store.record_alert(stack.group, 0.0, alert.event, alert.severity, alert.subject),
    )
    publisher.send(Alert("eip-moved", "info", "i-0 is serving"))
    assert [a["attributes"]["event"] for a in stack.alerts()] == ["eip-moved"]
