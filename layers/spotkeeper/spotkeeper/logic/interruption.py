"""Spot interruption warnings and rebalance recommendations: start the replacement before the instance goes.

First of all the replica is marked warned in the ready set, so the gateway sends it no new request; if it
holds the Elastic IP and another ready replica exists, the EIP moves to that one at once.

The doomed instance keeps the Elastic IP and keeps serving; the launch hook of the replacement moves the EIP
once the replacement's TGI is ready, and then retires the doomed instance through the group so its
terminate hook drains it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spotkeeper.alerts import Alert
from spotkeeper.events import RebalanceRecommendation, SpotInterruptionWarning
from spotkeeper.group import Group, GroupInstance
from spotkeeper.logic.replicas import hand_over_primary, warn_replica
from spotkeeper.observability import MetricName, logger, metrics

if TYPE_CHECKING:
    from spotkeeper.deps import ControlDeps

REPLACE = "replace"


def react_to_interruption(event: SpotInterruptionWarning | RebalanceRecommendation, deps: ControlDeps) -> str:
    """Returns what was done, for logs and tests: ignored / duplicate / replacement-started / ..."""
    instance_id = event.detail.instance_id
    # Before anything else: one conditional write, a no-op for any instance that is not in the ready set.
    warned = warn_replica(instance_id, deps)
    outcome = _replace(event, deps)
    if outcome != "ignored":
        if not warned:
            # Not in the set yet (still loading), or already warned: a replica warned while loading never joins.
            warn_replica(instance_id, deps, create=True)
        # Runs on duplicates too, so the retry of a reaction that failed half-way finishes the hand-over.
        hand_over_primary(instance_id, deps, probe_tgi=False)
    return outcome


def _replace(event: SpotInterruptionWarning | RebalanceRecommendation, deps: ControlDeps) -> str:
    instance_id = event.detail.instance_id
    group = deps.fleet.describe_group()
    member = group.instance(instance_id)
    if member is None or not member.active:
        # EC2 events cannot be filtered on the group in EventBridge: most are about other instances.
        logger.info("instance is not an active member of the group", extra={"instance_id": instance_id})
        return "ignored"

    now = deps.clock.now()
    if isinstance(event, SpotInterruptionWarning):
        metrics.add_metric(name=MetricName.INTERRUPTIONS, unit="Count", value=1)
        mark, kind, severity = "doomed_at", "spot-interruption", "warning"
    else:
        metrics.add_metric(name=MetricName.REBALANCE_RECOMMENDATIONS, unit="Count", value=1)
        mark, kind, severity = "at_risk_since", "rebalance-recommendation", "info"
        if group.capacity_rebalance:
            if not deps.state.mark_at_risk(deps.group, instance_id, at=now):
                return "duplicate"
            deps.alerts.send(
                Alert(
                    kind,
                    severity,
                    f"Rebalance recommendation for {instance_id}: the group's Capacity Rebalancing replaces it",
                    {"instance_id": instance_id, "action": "capacity-rebalancing"},
                )
            )
            return "recorded"

    # Three AWS calls from the warning to the replacement's launch: describe the group, one conditional write
    # (mark, claim, plan), then the group's capacity change.
    first, claimed, how, desired_before = deps.state.begin_replacement(
        deps.group, instance_id, mark, now, owner=event.id, **plan_replacement(group, instance_id, deps)
    )
    if not claimed:
        # Another event (a duplicate, or the rebalance before this warning) already started the replacement.
        if first:
            _alert(deps, kind, severity, instance_id, "replacement already under way")
        logger.info("replacement already started", extra={"instance_id": instance_id})
        return "recorded" if first else "duplicate"

    start_replacement(group, instance_id, how, desired_before, deps)
    _alert(deps, kind, severity, instance_id, how)
    deps.state.finish_action(deps.group, instance_id, REPLACE)
    return "replacement-started"


def plan_replacement(group: Group, instance_id: str, deps: ControlDeps) -> dict:
    """How the group gets a replacement for ``instance_id`` now, while it keeps serving."""
    active = [i for i in group.instances if i.active]
    others = [i for i in active if i.instance_id != instance_id]
    if others:
        # Only a group with other instances needs to know which of them are leaving too.
        leaving = {r.instance_id for r in deps.state.instances(deps.group) if r.doomed or r.at_risk_since}
        others = [i for i in others if i.instance_id not in leaving]
        # Nor are the instances Auto Scaling is about to retire (the On-Demand ones of a return to Spot).
        staying = len(others) - surplus_to_retire(group, active, instance_id, leaving)
    else:
        staying = 0
    if staying >= group.desired:
        how = "group"  # Capacity Rebalancing or an earlier reaction already launched one.
    elif group.desired + 1 <= group.max_size:
        how = "scale-out"
    else:
        how = "detach"  # no headroom: detaching keeps desired capacity, so the group launches at once
    return {"how": how, "desired_before": group.desired}


def surplus_to_retire(group: Group, active: list[GroupInstance], instance_id: str, leaving: set[str]) -> int:
    """How many active instances Auto Scaling is about to retire that no record says are leaving.

    Above desired capacity the group is in a launch-before-terminate replacement: a change of
    OnDemandBaseCapacity (the return to Spot launches a Spot instance, then terminates the On-Demand one), or
    Capacity Rebalancing. Once the new instance is in service the group terminates one per instance above
    desired, so those are not capacity that stays. Instances already recorded as leaving (the one Capacity
    Rebalancing replaces) account for part of the surplus, and a warned instance still launching is itself the
    surplus (if it goes, the group keeps the old one and launches again). No new AWS call: the describe already
    read says it.
    """
    member = group.instance(instance_id)
    explained = sum(1 for i in active if i.instance_id in leaving)
    if member is not None and member.instance_id not in leaving and member.lifecycle_state != "InService":
        explained += 1
    return max(0, len(active) - group.desired - explained)


def start_replacement(group: Group, instance_id: str, how: str, desired_before: int, deps: ControlDeps) -> None:
    """Carry out the recorded plan with absolute values, so a retry or a racing event never adds a second
    instance."""
    if how == "scale-out":
        deps.fleet.set_desired(desired_before + 1)
    elif how == "detach" and group.instance(instance_id) is not None:
        deps.fleet.detach_keeping_capacity(instance_id)


def _alert(deps: ControlDeps, kind: str, severity: str, instance_id: str, how: str) -> None:
    endpoint = deps.state.get_endpoint(deps.group, consistent=False)
    serving = endpoint.serving_instance_id == instance_id
    what = "Spot interruption warning" if kind == "spot-interruption" else "Rebalance recommendation"
    deps.alerts.send(
        Alert(
            kind,
            severity,  # type: ignore[arg-type]
            f"{what} for {instance_id}{' (serving)' if serving else ''}: replacement {how}",
            {"instance_id": instance_id, "serving": serving, "replacement": how},
        )
    )
