"""Launch and terminate lifecycle hooks: the Elastic IP only ever moves to an instance whose TGI is ready.

Launch: wait (polling /health and /info) until the new instance serves the expected model, then move the EIP,
record it as the serving instance, CONTINUE, and retire instances that were only kept until a replacement was
ready. If the function's own time runs short the launch stays recorded and the scheduled probe finishes it;
past the deadline it is ABANDONed so the group tries again.

Terminate: keep the EIP on a healthy instance, let in-flight generations drain (bounded), CONTINUE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from spotkeeper.alerts import Alert
from spotkeeper.events import LaunchLifecycleAction, TerminateLifecycleAction
from spotkeeper.observability import logger
from spotkeeper.records import PendingLaunch

if TYPE_CHECKING:
    from spotkeeper.deps import ControlDeps
    from spotkeeper.group import Group
    from spotkeeper.records import InstanceRecord

CONTINUE = "CONTINUE"
ABANDON = "ABANDON"
RETIRE = "retire"
RESTORE_DESIRED = "restore-desired"
HEARTBEAT_EVERY_SECONDS = 60.0


def on_instance_launching(
    event: LaunchLifecycleAction, deps: ControlDeps, remaining_seconds: Callable[[], float]
) -> str:
    detail = event.detail
    now = deps.clock.now()
    launch = PendingLaunch(
        instance_id=detail.instance_id,
        hook_name=detail.hook_name,
        token=detail.lifecycle_action_token,
        started_at=now,
        deadline=now + deps.env.launch_deadline_seconds,
    )
    if not deps.state.put_pending_launch(deps.group, launch):
        recorded = deps.state.get_pending_launch(deps.group, detail.instance_id)
        if recorded is None or recorded.completed:
            logger.info("launch already finished", extra={"instance_id": detail.instance_id})
            return "duplicate"
        launch = recorded  # a redelivery, or the retry of a reaction that failed half-way: same deadline
    return wait_for_ready(launch, deps, remaining_seconds, owner=event.id)


def wait_for_ready(launch: PendingLaunch, deps: ControlDeps, remaining_seconds: Callable[[], float], owner: str) -> str:
    """Poll the new instance until it is ready, its deadline passes, or this invocation must hand over."""
    last_heartbeat = deps.clock.now()
    while True:
        outcome = check_launch(launch, deps, owner)
        if outcome != "waiting":
            return outcome
        if deps.clock.now() - last_heartbeat >= HEARTBEAT_EVERY_SECONDS:
            # Keeps the hook pending past its HeartbeatTimeout while a large model loads.
            deps.fleet.heartbeat(launch.hook_name, launch.token, launch.instance_id)
            last_heartbeat = deps.clock.now()
        if remaining_seconds() < deps.env.ready_poll_seconds + deps.env.handover_margin_seconds:
            deps.fleet.heartbeat(launch.hook_name, launch.token, launch.instance_id)
            logger.info("handing the launch over to the scheduled probe", extra={"instance_id": launch.instance_id})
            return "handed-over"
        deps.clock.sleep(deps.env.ready_poll_seconds)


def check_launch(launch: PendingLaunch, deps: ControlDeps, owner: str) -> str:
    """One look at a waiting launch: promote it if ready, abandon it past its deadline.

    ``owner`` names who looks (the launch event, or one probe run): a claim survives only its owner's retries.
    """
    if launch.status == "abandoned":
        return abandon(launch, deps, "deadline passed", owner)  # decided before; carry it through
    address = deps.fleet.private_address(launch.instance_id)
    if launch.status == "continued" and address is not None:
        return promote(launch, address, deps, owner)  # decided before a failure; carry it through
    if address is None:
        # The instance vanished (reclaimed, or terminated by hand) before it was ready.
        return abandon(launch, deps, "instance no longer exists", owner)
    readiness = deps.tgi.readiness(address, deps.env.model_id)
    if readiness.ready:
        return promote(launch, address, deps, owner)
    if deps.clock.now() >= launch.deadline:
        return abandon(launch, deps, f"TGI not ready before the deadline ({readiness.reason})", owner)
    logger.debug("not ready yet", extra={"instance_id": launch.instance_id, "reason": readiness.reason})
    return "waiting"


def promote(launch: PendingLaunch, address: str, deps: ControlDeps, owner: str) -> str:
    """The new instance is ready: EIP to it, record it as serving, CONTINUE, retire what it replaces."""
    if not deps.state.finish_launch(deps.group, launch.instance_id, "continued", owner, deps.clock.now()):
        return "duplicate"
    instance_id = launch.instance_id
    record = deps.state.get_instance(deps.group, instance_id)
    moved = ""
    if record.doomed or record.draining_since:
        # Interrupted before it was even ready: never give it the EIP; its own replacement will take over.
        logger.warning("ready instance is already doomed; not moving the EIP", extra={"instance_id": instance_id})
    else:
        _join_ready_set(instance_id, deps)
        moved = make_serving(instance_id, address, deps)
    deps.fleet.complete_lifecycle_action(launch.hook_name, launch.token, instance_id, CONTINUE)
    retired = retire_replaced(deps, keep=instance_id) if moved else []
    if moved == "moved":  # "already": a racing reaction (the probe's hand-over) moved it and said so
        deps.alerts.send(
            Alert(
                "eip-moved",
                "info",
                f"{instance_id} is serving: Elastic IP moved after TGI reported ready",
                {"instance_id": instance_id, "address": address, "retiring": retired},
            )
        )
    deps.state.complete_launch(deps.group, instance_id)
    return "promoted" if moved else "continued"


def make_serving(instance_id: str, address: str, deps: ControlDeps) -> str:
    """Move the EIP to ``instance_id`` and record it, unless a racing change makes that wrong.

    Returns "moved" when this call made it the serving instance, "already" when someone else just had (both
    truthy), and "" when it must not take over.
    """
    for _ in range(5):
        endpoint = deps.state.get_endpoint(deps.group)
        if endpoint.serving_instance_id == instance_id:
            deps.fleet.move_eip(instance_id)  # idempotent; repairs an EIP moved by someone else
            # Signal again: the retry of a reaction that failed after the move. A created stack refuses it quietly.
            deps.creation_signal.instance_serves(instance_id)
            return "already"
        if endpoint.serving_instance_id is not None and not _should_take_over(endpoint.serving_instance_id, deps):
            logger.info(
                "current serving instance is healthy and staying; not moving the EIP",
                extra={"instance_id": instance_id, "serving": endpoint.serving_instance_id},
            )
            return ""
        deps.fleet.move_eip(instance_id)
        if deps.state.set_serving(deps.group, instance_id, address, deps.clock.now(), endpoint.version):
            deps.creation_signal.instance_serves(instance_id)  # the stack being created waits for this
            return "moved"
        logger.info("endpoint changed while moving the EIP; deciding again", extra={"instance_id": instance_id})
    raise RuntimeError(f"could not record {instance_id} as serving: endpoint state keeps changing")


def _should_take_over(serving_instance_id: str, deps: ControlDeps) -> bool:
    record = deps.state.get_instance(deps.group, serving_instance_id)
    if record.doomed or record.at_risk_since or record.draining_since or record.marked_unhealthy:
        return True
    group = deps.fleet.describe_group()
    member = group.instance(serving_instance_id)
    return member is None or member.lifecycle_state != "InService"


def retire_replaced(deps: ControlDeps, keep: str) -> list[str]:
    """Retire the doomed (or at risk, or failing their probes) instances whose replacement was launched alongside
    them: through the group after a scale-out, directly after a detach (the instance is no longer the group's, so
    nothing else ever would)."""
    retired = []
    group = deps.fleet.describe_group()
    for record in deps.state.instances(deps.group):
        if record.instance_id == keep or record.replacement not in ("scale-out", "detach") or record.retired:
            continue
        if not (record.doomed or record.at_risk_since or record.marked_unhealthy):
            continue
        if record.replacement == "detach":
            if group.instance(record.instance_id) is None and _retire_detached(deps, record.instance_id, keep):
                retired.append(record.instance_id)
            continue
        if group.instance(record.instance_id) is None:
            deps.state.finish_action(deps.group, record.instance_id, RETIRE)
            continue
        if deps.state.claim_action(deps.group, record.instance_id, RETIRE, owner=keep) and deps.fleet.retire(
            record.instance_id
        ):
            deps.state.finish_action(deps.group, record.instance_id, RETIRE)
            retired.append(record.instance_id)
        # A retire that found the instance already leaving (Spot took it first) did not decrement desired
        # capacity: the instance stays un-retired, and its terminate hook gives the extra capacity back.
    return retired


def _retire_detached(deps: ControlDeps, instance_id: str, keep: str) -> bool:
    """Terminate an instance detached for a replacement that now serves. Its shutdown stops the TGI unit, which
    finishes in-flight generations within the unit's stop timeout; the EIP and the gateway already moved."""
    if not deps.state.claim_action(deps.group, instance_id, RETIRE, owner=keep):
        return False
    terminated = deps.fleet.terminate_detached(instance_id)
    deps.state.finish_action(deps.group, instance_id, RETIRE)
    return terminated


def abandon(launch: PendingLaunch, deps: ControlDeps, reason: str, owner: str) -> str:
    if not deps.state.finish_launch(deps.group, launch.instance_id, "abandoned", owner, deps.clock.now()):
        return "duplicate"
    deps.fleet.complete_lifecycle_action(launch.hook_name, launch.token, launch.instance_id, ABANDON)
    deps.alerts.send(
        Alert(
            "launch-abandoned",
            "critical",
            f"Launch of {launch.instance_id} abandoned: {reason}",
            {"instance_id": launch.instance_id, "reason": reason},
        )
    )
    deps.state.complete_launch(deps.group, launch.instance_id)
    return "abandoned"


def replacing(record: InstanceRecord) -> bool:
    """A scale-out replacement was launched for this instance (warned, at risk or failing), not yet retired."""
    return (
        record.replacement == "scale-out"
        and not record.retired
        and (record.doomed or record.at_risk_since is not None or record.marked_unhealthy)
    )


def desired_without(
    instance_id: str, desired_before: int, records: list[InstanceRecord], group: Group, replicas: int
) -> int:
    """The group's desired capacity once ``instance_id``, whose scale-out replacement is under way, has left.

    Alone, it is ``desired_before``, the capacity before its scale-out, and never more than the replicas (a
    scale-out started while another was under way counted that one's extra). With other replicas warned meanwhile,
    ``desired_before`` would take their extra capacity too, and the group would scale in: possibly a warned replica
    that still serves, or a replacement that is loading. Then it is the replicas plus one for each other instance of
    the group still active whose scale-out replacement is under way, never above the group's desired capacity now.
    """
    outstanding = 0
    for other in records:
        if other.instance_id == instance_id or not replacing(other):
            continue
        member = group.instance(other.instance_id)
        if member is not None and member.active:
            outstanding += 1
    if not outstanding:
        return min(desired_before, replicas)
    return min(group.desired, replicas + outstanding)


def on_instance_terminating(event: TerminateLifecycleAction, deps: ControlDeps) -> str:
    detail = event.detail
    instance_id = detail.instance_id
    _leave_ready_set(instance_id, deps)  # the gateway stops routing to it; tombstoned, it never rejoins
    record = deps.state.get_instance(deps.group, instance_id)
    # If Spot took it before its replacement was ready, give back the extra capacity asked for it, before the
    # group replaces it a second time. The value is absolute, so it is harmless after a retire, too; it keeps the
    # extra capacity of every other replacement still under way (another replica warned meanwhile).
    if (
        record.replacement == "scale-out"
        and not record.retired
        and record.desired_before is not None
        and deps.state.claim_action(deps.group, instance_id, RESTORE_DESIRED, owner=event.id)
    ):
        others = [r for r in deps.state.instances(deps.group) if r.instance_id != instance_id and replacing(r)]
        # Alone, it gives back what it asked (never above the replicas: a scale-out counted from another one's);
        # only with others under way is the group's view needed.
        desired = min(record.desired_before, deps.env.replicas)
        if others:
            desired = desired_without(instance_id, desired, others, deps.fleet.describe_group(), deps.env.replicas)
        deps.fleet.set_desired(desired)
        deps.state.finish_action(deps.group, instance_id, RESTORE_DESIRED)
    endpoint = deps.state.get_endpoint(deps.group)
    was_serving = endpoint.serving_instance_id == instance_id
    handed_to = hand_over_serving(instance_id, deps) if was_serving else None
    # Marked draining only after the hand-over, so the gateway never sees a draining serving instance while a
    # ready one is there to take over.
    first = deps.state.mark_draining(deps.group, instance_id, at=deps.clock.now())
    address = deps.fleet.private_address(instance_id)
    drained = drain(address, deps) if address else "gone"
    completed = deps.fleet.complete_lifecycle_action(
        detail.hook_name, detail.lifecycle_action_token, instance_id, CONTINUE
    )
    if first:
        left_nothing_serving = was_serving and handed_to is None
        if handed_to:
            outcome = f", EIP now on {handed_to}"
        else:
            outcome = ", no other ready instance" if left_nothing_serving else ""
        deps.alerts.send(
            Alert(
                "instance-terminating",
                "critical" if left_nothing_serving else "info",
                f"{instance_id} terminating: {drained}{outcome}",
                {
                    "instance_id": instance_id,
                    "drain": drained,
                    "serving_now": handed_to or endpoint.serving_instance_id,
                },
            )
        )
    return "completed" if completed else "already-completed"


def hand_over_serving(leaving: str, deps: ControlDeps) -> str | None:
    """The serving instance is leaving: put the EIP on another ready instance of the group, if there is one."""
    group = deps.fleet.describe_group()
    leaving_ids = {r.instance_id for r in deps.state.instances(deps.group) if r.doomed or r.draining_since}
    for member in group.instances:
        if member.instance_id == leaving or member.instance_id in leaving_ids or member.lifecycle_state != "InService":
            continue
        address = deps.fleet.private_address(member.instance_id)
        if (
            address
            and deps.tgi.readiness(address, deps.env.model_id).ready
            and make_serving(member.instance_id, address, deps)
        ):
            return member.instance_id
    endpoint = deps.state.get_endpoint(deps.group)
    if endpoint.serving_instance_id == leaving:
        deps.state.clear_serving(deps.group, leaving, endpoint.version)
    return None


def _join_ready_set(instance_id: str, deps: ControlDeps) -> None:
    from spotkeeper.logic.replicas import join_ready_set  # replicas builds on this module

    join_ready_set(instance_id, deps)


def _leave_ready_set(instance_id: str, deps: ControlDeps) -> None:
    from spotkeeper.logic.replicas import leave_ready_set

    leave_ready_set(instance_id, deps, "terminating")


def drain(address: str, deps: ControlDeps) -> str:
    """Wait, at most DRAIN_SECONDS, until TGI has no queued or running generation."""
    deadline = deps.clock.now() + deps.env.drain_seconds
    while True:
        load = deps.tgi.load(address)
        if load is None:
            return "unreachable"
        if load.idle:
            return "drained"
        if deps.clock.now() >= deadline:
            return f"drain cut at {deps.env.drain_seconds:g}s ({load.queue_size:g} queued, {load.batch_size:g} running)"
        deps.clock.sleep(min(2.0, deps.env.ready_poll_seconds))
