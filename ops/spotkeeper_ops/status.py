"""``spotkeeper status --stack NAME [--watch]``: a deployed stack at a glance.

Serving instance and its health, where the Elastic IP is, capacity mode and since when, pending launches with their
deadlines, alarms in ALARM and the last alerts. Exit 0 when the endpoint is serving (an instance recorded as serving,
InService, healthy, holding the EIP, no alarm), 1 when it is degraded, 2 when the stack cannot be read.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from spotkeeper.state import StateStore


@dataclass
class StackClients:
    cloudformation: Any
    autoscaling: Any
    ec2: Any
    cloudwatch: Any
    dynamodb: Any  # a boto3 DynamoDB service resource

    @classmethod
    def from_session(cls, session: Any) -> StackClients:
        return cls(
            cloudformation=session.client("cloudformation"),
            autoscaling=session.client("autoscaling"),
            ec2=session.client("ec2"),
            cloudwatch=session.client("cloudwatch"),
            dynamodb=session.resource("dynamodb"),
        )


@dataclass
class Status:
    stack: str
    group: str = ""
    serving: str | None = None
    serving_address: str | None = None
    serving_since: float | None = None
    serving_state: str = ""
    serving_health: str = ""
    probe_failures: int = 0
    last_healthy: tuple[float, float] | None = None  # (timestamp, value) of the newest Healthy datapoint
    eip_address: str | None = None
    eip_instance: str | None = None
    mode: str = "spot"
    mode_since: float | None = None
    mode_reason: str | None = None
    instances: list[tuple[str, str, str, str]] = field(default_factory=list)  # id, state, health, spotkeeper's note
    pending: list[tuple[str, float, float, str]] = field(default_factory=list)  # id, started, deadline, status
    alarms: list[tuple[str, str]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class StackNotFound(RuntimeError):
    pass


def collect(stack_name: str, clients: StackClients, now: float) -> Status:
    try:
        stack = clients.cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
    except ClientError as error:
        raise StackNotFound(f"stack {stack_name}: {error.response['Error'].get('Message', error)}") from None
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    missing = {"GroupName", "EipAllocationId", "StateTableName"} - set(outputs)
    if missing:
        raise StackNotFound(f"stack {stack_name} ({stack['StackStatus']}) has no output {', '.join(sorted(missing))}")
    status = Status(stack=stack_name, group=outputs["GroupName"])
    state = StateStore(clients.dynamodb.Table(outputs["StateTableName"]))

    endpoint = state.get_endpoint(status.group)
    status.serving, status.serving_address, status.serving_since = (
        endpoint.serving_instance_id,
        endpoint.serving_address,
        endpoint.serving_since,
    )
    status.mode, status.mode_since, status.mode_reason = endpoint.mode, endpoint.mode_since, endpoint.mode_reason

    groups = clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[status.group])
    records = {r.instance_id: r for r in state.instances(status.group)}
    for instance in (groups["AutoScalingGroups"] or [{}])[0].get("Instances", []):
        record = records.get(instance["InstanceId"])
        note = ""
        if record is not None:
            marks = [("doomed", record.doomed), ("at risk", record.at_risk_since), ("draining", record.draining_since)]
            note = ", ".join(name for name, on in marks if on)
        status.instances.append(
            (instance["InstanceId"], instance["LifecycleState"], instance.get("HealthStatus", ""), note)
        )
        if instance["InstanceId"] == status.serving:
            status.serving_state, status.serving_health = instance["LifecycleState"], instance.get("HealthStatus", "")
    if not groups["AutoScalingGroups"]:
        status.problems.append(f"group {status.group} does not exist")
    if status.serving:
        status.probe_failures = state.get_instance(status.group, status.serving).probe_failures
    status.last_healthy = _last_healthy(clients.cloudwatch, status.group, now)

    address = clients.ec2.describe_addresses(AllocationIds=[outputs["EipAllocationId"]])["Addresses"][0]
    status.eip_address, status.eip_instance = address.get("PublicIp"), address.get("InstanceId")

    status.pending = [(p.instance_id, p.started_at, p.deadline, p.status) for p in state.waiting_launches(status.group)]
    alarms = clients.cloudwatch.describe_alarms(AlarmNamePrefix=f"{stack_name}-", StateValue="ALARM")
    status.alarms = [(a["AlarmName"], a.get("StateReason", "")) for a in alarms.get("MetricAlarms", [])]
    status.alerts = state.recent_alerts(status.group, limit=5)

    if not status.serving:
        status.problems.append("no instance is serving")
    else:
        if status.serving_state != "InService":
            status.problems.append(f"serving instance is {status.serving_state or 'not in the group'}")
        if status.serving_health and status.serving_health != "Healthy":
            status.problems.append(f"serving instance is {status.serving_health}")
        if status.probe_failures:
            status.problems.append(f"{status.probe_failures} failed probe(s) in a row")
        if status.eip_instance != status.serving:
            status.problems.append(f"Elastic IP is on {status.eip_instance or 'nothing'}, not on the serving instance")
    status.problems += [f"alarm {name} in ALARM" for name, _ in status.alarms]
    return status


def _last_healthy(cloudwatch: Any, group: str, now: float) -> tuple[float, float] | None:
    datapoints = cloudwatch.get_metric_statistics(
        Namespace="Spotkeeper",
        MetricName="Healthy",
        Dimensions=[{"Name": "AutoScalingGroupName", "Value": group}, {"Name": "service", "Value": "spotkeeper"}],
        StartTime=dt.datetime.fromtimestamp(now - 900, dt.UTC),
        EndTime=dt.datetime.fromtimestamp(now + 60, dt.UTC),
        Period=60,
        Statistics=["Maximum"],
    )["Datapoints"]
    if not datapoints:
        return None
    newest = max(datapoints, key=lambda d: d["Timestamp"])
    return newest["Timestamp"].timestamp(), float(newest["Maximum"])


def _when(at: float | None, now: float) -> str:
    if at is None:
        return "?"
    stamp = dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    ago = now - at
    span = f"{ago / 3600:.1f} h" if ago >= 3600 else f"{ago / 60:.0f} min" if ago >= 60 else f"{ago:.0f} s"
    return f"{stamp} ({span} ago)" if ago >= 0 else f"{stamp} (in {-ago / 60:.0f} min)"


def render(status: Status, now: float) -> str:
    lines = [f"stack {status.stack}, group {status.group}"]
    if status.serving:
        health = f"{status.serving_state or 'not in group'}/{status.serving_health or '?'}"
        lines.append(
            f"serving   {status.serving} at {status.serving_address} since {_when(status.serving_since, now)}; "
            f"{health}; {status.probe_failures} failed probe(s)"
        )
    else:
        lines.append("serving   nothing")
    if status.last_healthy:
        at, value = status.last_healthy
        lines.append(f"probe     Healthy={value:g} at {_when(at, now)}")
    lines.append(f"eip       {status.eip_address} -> {status.eip_instance or 'nothing'}")
    reason = f" ({status.mode_reason})" if status.mode_reason else ""
    since = _when(status.mode_since, now) if status.mode_since else "the deploy"
    lines.append(f"capacity  {status.mode} since {since}{reason}")
    for instance_id, state, health, note in status.instances:
        lines.append(f"instance  {instance_id} {state} {health}" + (f" ({note})" if note else ""))
    for instance_id, started, deadline, launch_status in status.pending:
        lines.append(
            f"launch    {instance_id} {launch_status}, started {_when(started, now)}, deadline {_when(deadline, now)}"
        )
    for name, reason in status.alarms:
        lines.append(f"ALARM     {name}: {reason}")
    for alert in status.alerts:
        lines.append(f"alert     {_when(alert['at'], now)} [{alert['severity']}] {alert['subject']}")
    lines.append("verdict   " + ("serving" if not status.problems else "DEGRADED: " + "; ".join(status.problems)))
    return "\n".join(lines)


def run_status(
    stack_name: str,
    clients: StackClients,
    out: Callable[[str], None],
    watch: bool = False,
    interval: float = 10.0,
    iterations: int | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Print the status once, or every ``interval`` seconds with ``watch`` (``iterations`` bounds it, for tests)."""
    code = 0
    shown = 0
    while True:
        now = clock()
        try:
            status = collect(stack_name, clients, now)
        except StackNotFound as error:
            out(f"error: {error}")
            return 2
        if watch:
            out("\x1b[2J\x1b[H" + dt.datetime.fromtimestamp(now, dt.UTC).strftime("%H:%M:%SZ"))
        out(render(status, now))
        code = 1 if status.problems else 0
        shown += 1
        if not watch or (iterations is not None and shown >= iterations):
            return code
        sleep(interval)
