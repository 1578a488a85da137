"""Reaction: every event kind in ``events/``, delivered to its real handler against the embedded AWS.

The stack is deployed from template.yaml into a moto server on loopback (``spotkeeper_local.embedded_aws``,
the drill's AWS) and the drill's local world is built around it (``spotkeeper_local.world``: the group's
lifecycle and refreshes, the Spot market, TGI per instance); the handlers' clients come from one boto3 session
whose every API call is counted through botocore's events. Lifecycle events are the ones the group emits. The
events play one story, so each handler meets the state it would meet in AWS: the first instance is launched and
promoted, a Spot warning replaces it, the replacement is promoted and the old one drained, Spot capacity runs
out and the group falls back to On-Demand, Spot returns.

Wall time is the handler's own (``lambda_runtime.invoke``) with every client already built and used once,
so it is what a warm function spends per event, AWS round trips to moto included. Sleeps (a launch hook
polling TGI, a terminate hook draining) run on a simulated clock and cost no wall time.

Calls are counted on ``before-parameter-build`` (once per API call, retries not counted): local stand-ins
answer the calls moto lacks (CompleteLifecycleAction, GetSpotPlacementScores, StartInstanceRefresh) in
``before-call``, and a ``before-call`` counter would not see them.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.servers import free_port
from bench.stats import median

# Handler path for each event sample, as the template's rules route them.
EVENT_FUNCTION = {
    "lifecycle-launch": "lifecycle",
    "lifecycle-terminate": "lifecycle",
    "lifecycle-launch-other-group": "lifecycle",
    "malformed-lifecycle": "lifecycle",
    "spot-interruption-warning": "interruption",
    "spot-interruption-unknown-instance": "interruption",
    "malformed-spot-interruption": "interruption",
    "rebalance-recommendation": "interruption",
    "schedule": "health",
    "launch-unsuccessful-spot-capacity": "capacity",
    "launch-unsuccessful-bad-ami": "capacity",
    "alarm-endpoint-down": "capacity",
    "alarm-endpoint-recovered": "capacity",
    "capacity-schedule": "capacity",
}
# The calls that ask the group for a replacement: the end of "warning -> replacement launch requested".
REPLACEMENT_CALLS = frozenset({"SetDesiredCapacity", "DetachInstances"})


class ReactionError(RuntimeError):
    pass


@dataclass(frozen=True)
class ReactionConfig:
    repeats: int = 3
    log_path: Path = Path("build/bench/reaction.log")


@dataclass
class CallCounter:
    """Every API call made through one boto3 session, in order: "service:Operation"."""

    calls: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event_name: str = "", **_: Any) -> None:
        # event_name is "before-parameter-build.<service>.<Operation>"
        _, service, operation = event_name.split(".", 2)
        with self._lock:
            self.calls.append(f"{service}:{operation}")

    def since(self, mark: int) -> list[str]:
        with self._lock:
            return list(self.calls[mark:])

    def mark(self) -> int:
        with self._lock:
            return len(self.calls)


@dataclass
class Delivery:
    sample: str
    function: str
    outcome: str
    wall_ms: float
    calls: list[str]


def calls_until_replacement(calls: list[str]) -> int | None:
    """How many calls were made up to and including the one that asks for a replacement, or None."""
    for index, call in enumerate(calls, start=1):
        if call.split(":", 1)[1] in REPLACEMENT_CALLS:
            return index
    return None


@contextlib.contextmanager
def _handlers_quiet(log_path: Path) -> Iterator[None]:
    """Handlers log JSON and print EMF metrics to stdout; that goes to a log file, not the bench's table."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log, contextlib.redirect_stdout(log), warnings.catch_warnings():
        # Powertools warns on stderr when a handler published no metric (an ignored event): expected here.
        warnings.simplefilter("ignore", UserWarning)
        from spotkeeper.observability import logger

        handler = getattr(logger, "registered_handler", None)
        previous = getattr(handler, "stream", None)
        if handler is not None and hasattr(handler, "setStream"):
            handler.setStream(log)
        try:
            yield
        finally:
            if handler is not None and previous is not None:
                handler.setStream(previous)


@contextlib.contextmanager
def _restored_environ() -> Iterator[None]:
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class ReactionWorld:
    """The deployed stack and the local world around it, on counted clients."""

    def __init__(self, aws: Any, template: Any, stack_name: str) -> None:
        from spotkeeper_local.sim_clock import SimClock
        from spotkeeper_local.world import World

        aws.reset()
        parameters = {"TgiPort": str(free_port()), "BackendCacheSeconds": "0", "MinOnDemandSeconds": "0"}
        self.stack = aws.deploy(template, stack_name, parameters)
        self.clock = SimClock()
        self.counter = CallCounter()
        session = aws.session()
        # Registered on the session before any client exists: every client of the session inherits it.
        session.events.register("before-parameter-build", self.counter)
        self.plain = aws.session()  # the bench's own look at AWS, not counted
        self.env = self.stack.function_env
        self.group = self.stack.group
        self.world = World.build(
            session,
            self.clock,
            self.env,
            group=self.group,
            tgi_port=int(self.env["lifecycle"]["TGI_PORT"]),
            look=self.plain,
        )
        self.clients, self.deps, self.fleet, self.spot = (
            self.world.clients,
            self.world.deps,
            self.world.fleet,
            self.world.market,
        )
        self._emitted: list[dict[str, Any]] = []
        self._warm_up()

    def _warm_up(self) -> None:
        """Use every client once (endpoint, credentials, first connection), so wall times are warm."""
        self.clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.group])
        self.clients.ec2.describe_addresses()
        self.clients.sns.list_topics()
        self.clients.cloudwatch.list_metrics(Namespace="Spotkeeper")
        self.clients.table(self.stack.table_name).get_item(Key={"pk": "bench", "sk": "warm-up"})

    def instances(self) -> list[str]:
        groups = self.plain.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[self.group])
        return [i["InstanceId"] for i in groups["AutoScalingGroups"][0]["Instances"]]

    def lifecycle_event(self, instance_id: str, launching: bool) -> dict[str, Any]:
        """The lifecycle event the group emitted for the instance (its TGI booted when it launched)."""
        self.world.pump(self._emitted.append)
        kind = "EC2 Instance-launch Lifecycle Action" if launching else "EC2 Instance-terminate Lifecycle Action"
        for event in self._emitted:
            if event["detail-type"] == kind and event["detail"]["EC2InstanceId"] == instance_id:
                self._emitted.remove(event)
                return event
        raise ReactionError(f"the group emitted no {kind!r} for {instance_id}")

    def close(self) -> None:
        self.world.close()


# --- the events, shaped like the samples with this stack's names ---------------------------------------------
def _instance_event(sample: str, instance_id: str, at: float) -> dict[str, Any]:
    from spotkeeper_local.aws_events import aws_event

    return aws_event(
        sample,
        detail={"instance-id": instance_id},
        resources=[f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"],
        at=at,
    )


def _group_event(sample: str, world: ReactionWorld, at: float) -> dict[str, Any]:
    from spotkeeper_local.aws_events import aws_event, load_event

    original = load_event(sample)
    resources = [r.replace("spotkeeper-tgi", world.group) for r in original.get("resources", [])]
    return aws_event(sample, detail={"AutoScalingGroupName": world.group}, resources=resources, at=at)


def _alarm_event(sample: str, world: ReactionWorld, at: float) -> dict[str, Any]:
    from spotkeeper_local.aws_events import aws_event, load_event

    alarm = world.env["capacity"]["ENDPOINT_DOWN_ALARM_NAME"]
    detail = load_event(sample)["detail"]
    detail["alarmName"] = alarm
    for metric in detail.get("configuration", {}).get("metrics", []):
        dimensions = metric.get("metricStat", {}).get("metric", {}).get("dimensions", {})
        if "AutoScalingGroupName" in dimensions:
            dimensions["AutoScalingGroupName"] = world.group
    return aws_event(
        sample, detail=detail, resources=[f"arn:aws:cloudwatch:us-east-1:123456789012:alarm:{alarm}"], at=at
    )


def _as_is(sample: str, at: float) -> dict[str, Any]:
    from spotkeeper_local.aws_events import aws_event

    return aws_event(sample, at=at)


def deliver(world: ReactionWorld, sample: str, event: dict[str, Any]) -> Delivery:
    from spotkeeper.events import InvalidEvent
    from spotkeeper_local.lambda_runtime import invoke

    function = EVENT_FUNCTION[sample]
    mark = world.counter.mark()
    started = time.perf_counter()
    try:
        result = invoke(function, event, world.deps[function], clock=world.clock, timeout=900)
        outcome = _outcome(result)
    except InvalidEvent:
        outcome = "rejected (InvalidEvent: retried, then the DLQ)"
    wall_ms = (time.perf_counter() - started) * 1000.0
    return Delivery(sample, function, outcome, wall_ms, world.counter.since(mark))


def _outcome(result: Any) -> str:
    if isinstance(result, dict):
        if "outcome" in result:
            return str(result["outcome"])
        if "healthy" in result:
            return f"healthy={result['healthy']}"
    return str(result)


def play_story(world: ReactionWorld) -> list[Delivery]:
    """Every sample once, in an order that gives each handler the state it expects in AWS."""
    done: list[Delivery] = []
    now = world.clock.now

    def step(sample: str, event: dict[str, Any], expect: Callable[[Delivery], bool] | None = None) -> Delivery:
        delivery = deliver(world, sample, event)
        if expect is not None and not expect(delivery):
            raise ReactionError(f"{sample}: unexpected outcome {delivery.outcome!r} (calls {delivery.calls})")
        done.append(delivery)
        return delivery

    [first] = world.instances()
    step("lifecycle-launch", world.lifecycle_event(first, True), lambda d: d.outcome == "promoted")
    step("schedule", _as_is("schedule", now()), lambda d: d.outcome == "healthy=True")
    step("spot-interruption-warning", _instance_event("spot-interruption-warning", first, now()),
         lambda d: d.outcome == "replacement-started")  # fmt: skip
    replacement = next(i for i in world.instances() if i != first)
    deliver_launch = world.lifecycle_event(replacement, True)
    world.clock.advance(1.0)
    # The replacement's launch hook: promoted, and the doomed instance retired through the group.
    step("lifecycle-launch", deliver_launch, lambda d: d.outcome == "promoted")
    done[-1].sample = "lifecycle-launch (replacement)"
    step("lifecycle-terminate", world.lifecycle_event(first, False))
    world.world.pump(world._emitted.append)  # the terminated instance's TGI stops
    step("rebalance-recommendation", _instance_event("rebalance-recommendation", replacement, now()))
    stranger = _instance_event("spot-interruption-warning", "i-0123456789abcdef0", now())
    step("spot-interruption-unknown-instance", stranger, lambda d: d.outcome == "ignored")
    step(
        "lifecycle-launch-other-group", _as_is("lifecycle-launch-other-group", now()), lambda d: d.outcome == "ignored"
    )
    step("malformed-spot-interruption", _as_is("malformed-spot-interruption", now()), lambda d: "rejected" in d.outcome)
    step("malformed-lifecycle", _as_is("malformed-lifecycle", now()), lambda d: "rejected" in d.outcome)
    step("schedule", _as_is("schedule", now()), lambda d: d.outcome == "healthy=True")
    done[-1].sample = "schedule (after the failover)"
    world.spot.set_score(1)
    step("launch-unsuccessful-spot-capacity", _group_event("launch-unsuccessful-spot-capacity", world, now()))
    step("launch-unsuccessful-bad-ami", _group_event("launch-unsuccessful-bad-ami", world, now()))
    step("alarm-endpoint-down", _alarm_event("alarm-endpoint-down", world, now()))
    step("alarm-endpoint-recovered", _alarm_event("alarm-endpoint-recovered", world, now()))
    world.clock.advance(600.0)
    world.spot.set_score(9)
    step("capacity-schedule", _as_is("capacity-schedule", now()))
    return done


def run(config: ReactionConfig, progress: Any = print) -> dict[str, Any]:
    with _restored_environ():
        os.environ["POWERTOOLS_TRACE_DISABLED"] = "true"  # no X-Ray daemon here
        os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "spotkeeper")
        os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Spotkeeper")
        config.log_path.parent.mkdir(parents=True, exist_ok=True)
        config.log_path.write_text("")
        with _handlers_quiet(config.log_path):
            from spotkeeper_local.embedded_aws import EmbeddedAws, load_sam_template, local_template

            template = local_template(load_sam_template())
            stories: list[list[Delivery]] = []
            with EmbeddedAws() as aws:
                for repeat in range(config.repeats):
                    progress(f"  reaction: story {repeat + 1}/{config.repeats}")
                    world = ReactionWorld(aws, template, f"bench-{repeat}")
                    try:
                        stories.append(play_story(world))
                    finally:
                        world.close()
    return summarize(stories)


def summarize(stories: list[list[Delivery]]) -> dict[str, Any]:
    if not stories:
        raise ReactionError("no story was played")
    rows = []
    for index, first in enumerate(stories[0]):
        same = [story[index] for story in stories]
        counts = [len(d.calls) for d in same]
        row: dict[str, Any] = {
            "event": first.sample,
            "function": first.function,
            "outcome": first.outcome,
            "wall_ms_median": round(median([d.wall_ms for d in same]), 1),
            "wall_ms": [round(d.wall_ms, 1) for d in same],
            "api_calls": int(median(counts)),
            "api_calls_per_repeat": counts,
            "calls": first.calls,
        }
        until = calls_until_replacement(first.calls)
        if until is not None:
            row["calls_until_replacement_requested"] = until
        rows.append(row)
    warning = next(r for r in rows if r["event"] == "spot-interruption-warning")
    return {
        "repeats": len(stories),
        "counted_on": "botocore before-parameter-build (one per API call; retries inside a call not counted)",
        "clock": "simulated for sleeps (TGI readiness polls, drains); wall time is the handler's own",
        "warning_to_replacement_calls": warning.get("calls_until_replacement_requested"),
        "warning_calls_in_order": warning["calls"],
        "events": rows,
    }


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2)
