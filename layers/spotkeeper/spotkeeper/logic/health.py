"""The scheduled probe, every minute: is the serving TGI healthy, and what is left to finish.

Publishes Healthy / ProbeLatency / QueueSize, counts consecutive failures and, after N, replaces the serving
instance: a failed probe is probed again a few seconds later, within the same run, so N failures in a row take
seconds rather than N minutes; then its replacement launches beside it (scale-out), while it keeps the Elastic IP
until the replacement serves (launch before terminate: nothing else serves anyway, and a TGI that only stalled may
answer again). Only with no room beside it is it marked Unhealthy so the group replaces it, terminating it first.
Also finishes launch hooks the lifecycle function handed over; adopts
a ready instance when nothing is recorded as serving (first deploy, attach mode, a lost handover); gives back the
extra capacity of a scale-out replacement whose predecessor is leaving with its terminate event lost.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from spotkeeper.alerts import Alert
from spotkeeper.events import LifecycleHook
from spotkeeper.logic.interruption import REPLACE, plan_replacement, start_replacement
from spotkeeper.logic.lifecycle import RESTORE_DESIRED, check_launch, hand_over_serving, make_serving
from spotkeeper.logic.replicas import reconcile_ready_set
from spotkeeper.observability import MetricName, logger, metrics
from spotkeeper.records import ON_DEMAND, PendingLaunch

if TYPE_CHECKING:
    from spotkeeper.deps import ControlDeps
    from spotkeeper.tgi import Readiness


@dataclass
class ProbeReport:
    serving_instance_id: str | None = None
    healthy: bool = False
    reason: str = ""
    latency_ms: float | None = None
    queue_size: float | None = None
    consecutive_failures: int = 0
    marked_unhealthy: bool = False
    adopted: str | None = None
    eip_repaired: bool = False
    launches: dict[str, str] = field(default_factory=dict)
    adopted_launches: list[str] = field(default_factory=list)
    ready_set: dict[str, str] = field(default_factory=dict)  # what the probe changed in the ready set
    capacity_given_back: list[str] = field(default_factory=list)
    left_serving: str | None = None  # the serving instance was leaving with no terminate event: handed over


# A failed probe of the serving instance is confirmed by probing again this many seconds later, in the same run.
CONFIRM_EVERY_SECONDS = 5.0
# A confirming probe starts only if the run keeps this much time after it (the ready set is probed after it).
CONFIRM_RESERVE_SECONDS = 15.0


def probe_endpoint(deps: ControlDeps, remaining_seconds: Callable[[], float] = lambda: math.inf) -> ProbeReport:
    report = ProbeReport()
    run = f"probe-{uuid.uuid4()}"
    report.adopted_launches = adopt_lost_launches(deps)
    for launch in deps.state.waiting_launches(deps.group):
        outcome = check_launch(launch, deps, owner=run)
        if outcome == "waiting":
            deps.fleet.heartbeat(launch.hook_name, launch.token, launch.instance_id)
        report.launches[launch.instance_id] = outcome
    report.capacity_given_back = give_back_capacity_of_lost_terminations(deps)

    endpoint = deps.state.get_endpoint(deps.group)
    if endpoint.serving_instance_id is not None and hand_over_from_leaving(endpoint.serving_instance_id, deps):
        report.left_serving = endpoint.serving_instance_id
        endpoint = deps.state.get_endpoint(deps.group)
    if endpoint.serving_instance_id is None:
        report.adopted = adopt_ready_instance(deps)
        endpoint = deps.state.get_endpoint(deps.group)
    report.serving_instance_id = endpoint.serving_instance_id

    if endpoint.serving_instance_id and endpoint.serving_address:
        report.eip_repaired = repair_eip(endpoint.serving_instance_id, deps)
        readiness, report.consecutive_failures = probe_serving(
            endpoint.serving_instance_id, endpoint.serving_address, deps, remaining_seconds
        )
        report.healthy, report.reason, report.latency_ms = readiness.ready, readiness.reason, readiness.latency_ms
        if readiness.ready:
            load = deps.tgi.load(endpoint.serving_address)
            report.queue_size = load.queue_size if load else None
        if report.consecutive_failures >= deps.env.unhealthy_after_failures:
            report.marked_unhealthy = replace_unhealthy(endpoint.serving_instance_id, report, deps)
    else:
        report.reason = "no serving instance"
    report.ready_set = reconcile_ready_set(deps, primary=endpoint.serving_instance_id)

    metrics.add_metric(name=MetricName.HEALTHY, unit="Count", value=1 if report.healthy else 0)
    if report.latency_ms is not None:
        metrics.add_metric(name=MetricName.PROBE_LATENCY, unit="Milliseconds", value=report.latency_ms)
    if report.queue_size is not None:
        metrics.add_metric(name=MetricName.QUEUE_SIZE, unit="Count", value=report.queue_size)
    metrics.add_metric(name=MetricName.CAPACITY_MODE, unit="Count", value=1 if endpoint.mode == ON_DEMAND else 0)
    logger.info("probe", extra={"probe": report.__dict__})
    return report


def probe_serving(
    instance_id: str, address: str, deps: ControlDeps, remaining_seconds: Callable[[], float]
) -> tuple[Readiness, int]:
    """Probe the serving instance; a failure is probed again every CONFIRM_EVERY_SECONDS while the run has time,
    until it answers or fails UnhealthyAfterFailures times in a row. Returns the last readiness and the count.

    Not once its replacement is under way (the count is past N already): nothing to decide any more.
    """
    readiness = deps.tgi.readiness(address, deps.env.model_id)
    failures = deps.state.record_probe(deps.group, instance_id, readiness.ready, at=deps.clock.now())
    # A look may take two timeouts (/health, then /info), and the run must keep time for what follows.
    needs = CONFIRM_EVERY_SECONDS + 2 * deps.env.probe_timeout_seconds + CONFIRM_RESERVE_SECONDS
    while not readiness.ready and 0 < failures < deps.env.unhealthy_after_failures and remaining_seconds() > needs:
        deps.clock.sleep(CONFIRM_EVERY_SECONDS)
        readiness = deps.tgi.readiness(address, deps.env.model_id)
        failures = deps.state.record_probe(deps.group, instance_id, readiness.ready, at=deps.clock.now())
    return readiness, failures


def adopt_lost_launches(deps: ControlDeps) -> list[str]:
    """Take over the readiness wait of instances held in Pending:Wait whose launch nobody recorded.

    Auto Scaling delivers lifecycle events best effort: when the launch event is lost, nothing waits for the new
    instance and its hook would run out into ABANDON (its DefaultResult) at the deadline, although its TGI may be
    ready long before. The probe records the launch itself, without a token (the hook is completed by InstanceId),
    and from then on looks at it every minute like a launch the lifecycle function handed over. A lifecycle event
    that arrives late finds the launch recorded and carries on with it.
    """
    adopted = []
    for member in deps.fleet.describe_group().instances:
        if member.lifecycle_state != "Pending:Wait":
            continue
        if deps.state.get_pending_launch(deps.group, member.instance_id) is not None:
            continue  # recorded by the lifecycle function (or an earlier probe), maybe finished already
        now = deps.clock.now()
        launch = PendingLaunch(
            instance_id=member.instance_id,
            hook_name=LifecycleHook.LAUNCH.value,
            token="",
            started_at=now,
            deadline=now + deps.env.launch_deadline_seconds,
        )
        if not deps.state.put_pending_launch(deps.group, launch):
            continue  # the lifecycle event, or a concurrent probe, recorded it first
        adopted.append(member.instance_id)
        deps.alerts.send(
            Alert(
                "launch-adopted",
                "warning",
                f"{member.instance_id} waits in Pending:Wait with no launch event: the probe takes over its launch",
                {"instance_id": member.instance_id, "hook": launch.hook_name, "deadline": launch.deadline},
            )
        )
    return adopted


# The owner of a give-back the probe claims: one for every run, so a run that failed half-way is redone by the next
# (the desired capacity it sets is absolute, so two runs doing it is harmless).
PROBE_OWNER = "health-probe"


def give_back_capacity_of_lost_terminations(deps: ControlDeps) -> list[str]:
    """An instance replaced by scale-out is leaving (Terminating:*) and nobody gave its extra capacity back.

    The terminate hook's reaction does that (``on_instance_terminating``), but Auto Scaling sends lifecycle events
    best effort: without it the group holds desired capacity N + 1, and once the hook times out and the instance is
    gone it launches a second, unneeded replacement. The probe sees the instance in Terminating:Wait (the hook
    holds it there for minutes) and gives the capacity back then, before the group can launch for it. Claimed like
    the hook's reaction, so exactly one of the two does it. An instance already gone is left alone: lowering the
    desired capacity then could make the group scale in the wrong instance.
    """
    given_back = []
    members = {m.instance_id: m for m in deps.fleet.describe_group().instances}
    for record in deps.state.instances(deps.group):
        if record.replacement != "scale-out" or record.retired or record.desired_before is None:
            continue
        member = members.get(record.instance_id)
        if member is None or not member.lifecycle_state.startswith("Terminating"):
            continue
        if not deps.state.claim_action(deps.group, record.instance_id, RESTORE_DESIRED, owner=PROBE_OWNER):
            continue  # its terminate event came after all (or did already): that reaction gives it back
        deps.fleet.set_desired(record.desired_before)
        deps.state.finish_action(deps.group, record.instance_id, RESTORE_DESIRED)
        given_back.append(record.instance_id)
        deps.alerts.send(
            Alert(
                "capacity-given-back",
                "warning",
                f"{record.instance_id} is terminating with no terminate event: desired capacity back to "
                f"{record.desired_before}",
                {"instance_id": record.instance_id, "desired": record.desired_before, "state": member.lifecycle_state},
            )
        )
    return given_back


def hand_over_from_leaving(serving_instance_id: str, deps: ControlDeps) -> bool:
    """The serving instance is terminating (Terminating:* in the group) or EC2 no longer runs it, and it is still
    recorded as serving: its terminate event, whose reaction hands over, was lost (or has not come yet). Hand over
    as that reaction would: to another ready instance, else nothing serves. A detached instance still running (the
    interruption's detach replacement) serves on until EC2 takes it, so it is left alone."""
    member = deps.fleet.describe_group().instance(serving_instance_id)
    terminating = member is not None and member.lifecycle_state.startswith("Terminating")
    if not terminating and deps.fleet.private_address(serving_instance_id) is not None:
        return False
    handed_to = hand_over_serving(serving_instance_id, deps)
    deps.alerts.send(
        Alert(
            "serving-left",
            "warning" if handed_to else "critical",
            f"{serving_instance_id} is leaving while still recorded as serving: "
            + (f"EIP now on {handed_to}" if handed_to else "no other ready instance"),
            {"instance_id": serving_instance_id, "serving_now": handed_to},
        )
    )
    return True


def repair_eip(serving_instance_id: str, deps: ControlDeps) -> bool:
    """Someone (a person, another tool) moved the Elastic IP off the serving instance: put it back.

    Not onto an instance EC2 is terminating or has terminated (Spot reclaimed it and its terminate event was lost):
    the EIP goes with the next serving instance.
    """
    holder = deps.fleet.eip_holder()
    if holder == serving_instance_id:
        return False
    if deps.fleet.private_address(serving_instance_id) is None:
        return False
    deps.fleet.move_eip(serving_instance_id)
    deps.alerts.send(
        Alert(
            "eip-repaired",
            "warning",
            f"Elastic IP was on {holder or 'nothing'}; moved back to the serving instance {serving_instance_id}",
            {"instance_id": serving_instance_id, "found_on": holder},
        )
    )
    return True


def replace_unhealthy(instance_id: str, report: ProbeReport, deps: ControlDeps) -> bool:
    """The serving instance failed N probes in a row: replace it, launch before terminate when it is the only one.

    Its replacement launches beside it (desired capacity + 1, the plan recorded in one conditional write as for a
    Spot warning, so a retry or an overlapping run never adds a second instance); it keeps the Elastic IP, and the
    replacement's launch hook moves the EIP once TGI is ready and retires it through the group (its terminate hook
    drains it). Marked Unhealthy for the group instead - terminated first, then replaced - when other replicas
    serve meanwhile, when the group has no room beside it (MaxSize), or when something else already launches.
    """
    record = deps.state.get_instance(deps.group, instance_id)
    if record.doomed or record.draining_since:
        return False  # already on its way out; its replacement is being handled
    group = deps.fleet.describe_group()
    if record.marked_unhealthy:
        if record.replacement != "scale-out" or record.desired_before is None:
            return False  # marked Unhealthy for the group already
        # An earlier run planned its replacement: finish it if that run could not (never plan anew: the group now
        # holds the replacement, and a new plan would count it as room taken).
        plan: dict | None = {"how": record.replacement, "desired_before": record.desired_before}
    else:
        member = group.instance(instance_id)
        plan = plan_replacement(group, instance_id, deps) if member is not None and member.active else None
        if deps.env.replicas > 1 or plan is None or plan["how"] != "scale-out":
            return mark_unhealthy_for_the_group(instance_id, report, deps)
    first, claimed, how, desired_before = deps.state.begin_replacement(
        deps.group, instance_id, "unhealthy_at", deps.clock.now(), owner=PROBE_OWNER, **plan
    )
    if claimed and how == "scale-out":
        start_replacement(group, instance_id, how, desired_before, deps)
        deps.state.finish_action(deps.group, instance_id, REPLACE)
    if not first:
        return False  # an earlier run marked it (this one finished its replacement if that run could not)
    deps.alerts.send(
        Alert(
            "instance-unhealthy",
            "critical",
            f"{instance_id} failed {report.consecutive_failures} probes in a row: replacement launching beside it, "
            "it keeps the Elastic IP until the replacement serves",
            {
                "instance_id": instance_id,
                "reason": report.reason,
                "failures": report.consecutive_failures,
                "replacement": how if claimed else f"{how} (already under way)",
            },
        )
    )
    return True


def mark_unhealthy_for_the_group(instance_id: str, report: ProbeReport, deps: ControlDeps) -> bool:
    if not deps.state.mark_unhealthy(deps.group, instance_id):
        return False
    deps.fleet.mark_unhealthy(instance_id)
    deps.alerts.send(
        Alert(
            "instance-unhealthy",
            "critical",
            f"{instance_id} failed {report.consecutive_failures} probes in a row: marked Unhealthy for replacement",
            {"instance_id": instance_id, "reason": report.reason, "failures": report.consecutive_failures},
        )
    )
    return True


def adopt_ready_instance(deps: ControlDeps) -> str | None:
    """Nothing is recorded as serving: give the EIP to an InService instance whose TGI is ready."""
    group = deps.fleet.describe_group()
    leaving = {
        r.instance_id for r in deps.state.instances(deps.group) if r.doomed or r.draining_since or r.marked_unhealthy
    }
    for member in group.instances:
        if member.lifecycle_state != "InService" or member.instance_id in leaving:
            continue
        address = deps.fleet.private_address(member.instance_id)
        if not address or not deps.tgi.readiness(address, deps.env.model_id).ready:
            continue
        outcome = make_serving(member.instance_id, address, deps)
        if outcome == "already":
            return member.instance_id  # a concurrent probe adopted it first, and alerted
        if outcome == "moved":
            deps.alerts.send(
                Alert(
                    "eip-moved",
                    "info",
                    f"{member.instance_id} adopted as the serving instance",
                    {"instance_id": member.instance_id, "address": address},
                )
            )
            return member.instance_id
    return None
