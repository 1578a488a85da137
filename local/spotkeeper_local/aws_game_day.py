"""The drill against a deployed stack: a real Spot interruption through AWS FIS, watched end to end.

    python -m spotkeeper_local.drill --stack NAME --yes-really-interrupt [--region REGION] [--watch-seconds N]

Reads the stack's outputs, checks that its group has a running Spot instance, subscribes a temporary SQS queue to
the alert topic, starts the stack's FIS experiment template (``aws:ec2:send-spot-instance-interruptions``, two
minutes' notice) and watches, every few seconds, the experiment, the group's instances, the Elastic IP, the
state table's serving instance and capacity mode, the stack's alarms and the alerts, printing a timeline in
seconds since the experiment started. The temporary queue is deleted at the end.

It interrupts a real instance of a real endpoint, so it refuses to run without ``--yes-really-interrupt``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

REQUIRED_OUTPUTS = ("FisExperimentTemplateId", "GroupName", "StateTableName", "EipAllocationId", "AlertTopicArn")
POLL_SECONDS = 5.0
EXPERIMENT_DONE = frozenset({"completed", "stopped", "failed", "cancelled"})


class GameDayError(RuntimeError):
    """The game day cannot start (missing confirmation, outputs, or nothing to interrupt)."""


@dataclass
class Watched:
    """What the watcher saw last, to print only what changed."""

    values: dict[str, Any] = field(default_factory=dict)

    def changed(self, key: str, value: Any) -> bool:
        if self.values.get(key, object()) == value:
            return False
        self.values[key] = value
        return True


def refuse_without_confirmation(args: argparse.Namespace) -> None:
    if not getattr(args, "yes_really_interrupt", False):
        raise GameDayError(
            f"--stack {args.stack} would interrupt a real Spot instance of that stack's group through AWS FIS. "
            "Run it again with --yes-really-interrupt if that is what you want."
        )


def stack_outputs(cloudformation: Any, stack: str) -> dict[str, str]:
    stacks = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    if not stacks:
        raise GameDayError(f"stack {stack} not found")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    missing = [name for name in REQUIRED_OUTPUTS if not outputs.get(name)]
    if missing:
        raise GameDayError(f"stack {stack} has no output {', '.join(missing)}: is it a spotkeeper stack?")
    return outputs


def spot_instances(ec2: Any, autoscaling: Any, group: str) -> list[str]:
    """Running Spot instances of the group, the ones FIS may interrupt."""
    groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]
    if not groups:
        raise GameDayError(f"Auto Scaling group {group} not found")
    ids = [i["InstanceId"] for i in groups[0]["Instances"] if i["LifecycleState"] == "InService"]
    if not ids:
        return []
    reservations = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    return [
        i["InstanceId"]
        for r in reservations
        for i in r["Instances"]
        if i.get("InstanceLifecycle") == "spot" and i["State"]["Name"] == "running"
    ]


class AlertInbox:
    """A temporary SQS queue subscribed to the alert topic for the length of the game day."""

    def __init__(self, sqs: Any, sns: Any, topic_arn: str, name: str) -> None:
        self._sqs, self._sns, self._topic = sqs, sns, topic_arn
        self.url = sqs.create_queue(QueueName=name)["QueueUrl"]
        self.arn = sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": self.arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
                }
            ],
        }
        sqs.set_queue_attributes(QueueUrl=self.url, Attributes={"Policy": json.dumps(policy)})
        self.subscription = sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=self.arn,
            Attributes={"RawMessageDelivery": "true"},
            ReturnSubscriptionArn=True,
        )["SubscriptionArn"]

    def read(self) -> list[dict[str, Any]]:
        alerts = []
        messages = self._sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        )
        for message in messages:
            self._sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])
            try:
                body = json.loads(message["Body"])
            except ValueError:
                body = {"summary": message["Body"][:200]}
            alerts.append(body if isinstance(body, dict) else {"summary": str(body)[:200]})
        return alerts

    def close(self) -> None:
        try:
            self._sns.unsubscribe(SubscriptionArn=self.subscription)
        finally:
            self._sqs.delete_queue(QueueUrl=self.url)


def run_game_day(args: argparse.Namespace, out: TextIO, session: Any = None) -> int:
    try:
        refuse_without_confirmation(args)
        return _run(args, out, session)
    except GameDayError as error:
        print(f"drill: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, out: TextIO, session: Any) -> int:
    import boto3

    session = session or boto3.session.Session(region_name=args.region)
    cloudformation, ec2, autoscaling = (session.client(n) for n in ("cloudformation", "ec2", "autoscaling"))
    fis, sqs, sns, cloudwatch = (session.client(n) for n in ("fis", "sqs", "sns", "cloudwatch"))
    table_resource = session.resource("dynamodb")
    outputs = stack_outputs(cloudformation, args.stack)
    group = outputs["GroupName"]
    candidates = spot_instances(ec2, autoscaling, group)
    if not candidates:
        raise GameDayError(f"group {group} has no running Spot instance for FIS to interrupt")
    table = table_resource.Table(outputs["StateTableName"])

    def line(t: float, event: str, action: str = "") -> None:
        print(f"{t:+7.0f}s  {event:<58} {action}".rstrip(), file=out, flush=True)

    before = _endpoint(table, group).get("serving_instance_id")
    inbox = AlertInbox(sqs, sns, outputs["AlertTopicArn"], f"{args.stack[:60]}-gameday-{uuid.uuid4().hex[:8]}")
    try:
        experiment = fis.start_experiment(
            experimentTemplateId=outputs["FisExperimentTemplateId"],
            clientToken=str(uuid.uuid4()),
            tags={"spotkeeper:game-day": args.stack},
        )["experiment"]
        started = time.monotonic()
        line(0, f"FIS experiment {experiment['id']} started", f"Spot instances in the group: {', '.join(candidates)}")
        result = _watch(args, fis, ec2, autoscaling, cloudwatch, table, inbox, outputs, experiment["id"], started, line)
    finally:
        inbox.close()
    serving, holder = result.get("serving"), result.get("eip")
    ok = bool(serving) and serving == holder and serving not in result.get("interrupted", [])
    print(
        f"\nbefore: serving {before}; after: serving {serving}, EIP on {holder}, mode {result.get('mode')}, "
        f"{len(result.get('alerts', []))} alerts",
        file=out,
    )
    print("game day: " + ("the endpoint moved to a healthy replacement" if ok else "CHECK THE ENDPOINT"), file=out)
    return 0 if ok else 1


def _endpoint(table: Any, group: str) -> dict[str, Any]:
    return table.get_item(Key={"pk": f"group#{group}", "sk": "endpoint"}, ConsistentRead=True).get("Item") or {}


def _watch(
    args: argparse.Namespace,
    fis: Any,
    ec2: Any,
    autoscaling: Any,
    cloudwatch: Any,
    table: Any,
    inbox: AlertInbox,
    outputs: dict[str, str],
    experiment_id: str,
    started: float,
    line: Callable[..., None],
) -> dict[str, Any]:
    seen = Watched()
    group = outputs["GroupName"]
    result: dict[str, Any] = {"alerts": [], "interrupted": []}
    settled_since: float | None = None
    while time.monotonic() - started < args.watch_seconds:
        t = time.monotonic() - started
        state = fis.get_experiment(id=experiment_id)["experiment"]["state"]["status"]
        if seen.changed("experiment", state):
            line(t, f"FIS experiment {state}")
        described = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]
        members = {i["InstanceId"]: i["LifecycleState"] for i in (described[0]["Instances"] if described else [])}
        for instance_id, lifecycle in members.items():
            if seen.changed(f"member:{instance_id}", lifecycle):
                line(t, f"{instance_id} {lifecycle}")
        for instance_id in [k.split(":", 1)[1] for k in seen.values if k.startswith("member:")]:
            if instance_id not in members and seen.changed(f"member:{instance_id}", None):
                line(t, f"{instance_id} left the group")
                result["interrupted"].append(instance_id)
        addresses = ec2.describe_addresses(AllocationIds=[outputs["EipAllocationId"]])["Addresses"]
        result["eip"] = addresses[0].get("InstanceId") if addresses else None
        if seen.changed("eip", result["eip"]):
            line(t, f"EIP now on {result['eip'] or 'nothing'}")
        endpoint = _endpoint(table, group)
        result["serving"], result["mode"] = endpoint.get("serving_instance_id"), endpoint.get("mode", "spot")
        if seen.changed("serving", result["serving"]):
            line(t, f"state table: serving instance {result['serving'] or 'none'}")
        if seen.changed("mode", result["mode"]):
            line(t, f"state table: capacity mode {result['mode']}")
        alarms = cloudwatch.describe_alarms(AlarmNamePrefix=f"{args.stack}-")["MetricAlarms"]
        for alarm in alarms:
            if seen.changed(f"alarm:{alarm['AlarmName']}", alarm["StateValue"]):
                line(t, f"alarm {alarm['AlarmName']}", alarm["StateValue"])
        for alert in inbox.read():
            result["alerts"].append(alert)
            line(t, f"alert [{alert.get('severity')}] {alert.get('event')}", str(alert.get("summary", ""))[:120])
        steady = (
            state in EXPERIMENT_DONE
            and result["serving"]
            and result["serving"] == result["eip"]
            and all(s == "InService" for s in members.values())
        )
        settled_since = (settled_since or t) if steady else None
        if settled_since is not None and t - settled_since >= 60:
            line(t, "endpoint steady for 60 s: done watching")
            break
        time.sleep(POLL_SECONDS)
    return result
