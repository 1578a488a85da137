"""Spot interruption warnings and rebalance recommendations: start the replacement before the instance goes.

The doomed instance keeps the Elastic IP and keeps serving; the launch hook of the replacement moves the EIP
once the replacement's TGI is ready, and then retires the doomed instance through the group so its
terminate hook drains it.
"""

from __future__ import annotations

from spotkeeper.alerts import Alert
from spotkeeper.deps import ControlDeps
from spotkeeper.events import RebalanceRecommendation, SpotInterruptionWarning
from spotkeeper.fleet import Group
from spotkeeper.observability import logger, metrics

REPLACE = "replace"


def react_to_interruption(event: SpotInterruptionWarning | RebalanceRecommendation, deps: ControlDeps) -> str:
    """Returns what was done, for logs and tests: ignored / duplicate / replacement-started / ..."""
    instance_id = event.detail.instance_id
    group = deps.fleet.describe_group()
    member = group.instance(instance_id)
    if member is None or not member.active:
        # EC2 events cannot be filtered on the group in EventBridge: most are about other instances.
        logger.info("instance is not an active member of the group", extra={"instance_id": instance_id})
        return "ignored"

    now = deps.clock.now()
    if isinstance(event, SpotInterruptionWarning):
        metrics.add_metric(name="Interruptions", unit="Count", value=1)
        first = deps.state.mark_doomed(deps.group, instance_id, reason="spot-interruption", at=now)
        kind, severity = "spot-interruption", "warning"
    else:
        metrics.add_metric(name="RebalanceRecommendations", unit="Count", value=1)
        first = deps.state.mark_at_risk(deps.group, instance_id, at=now)
        kind, severity = "rebalance-recommendation", "info"
        if group.capacity_rebalance:
            if not first:
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

    if not deps.state.claim_action(deps.group, instance_id, REPLACE, owner=event.id):
        # Another event (a duplicate, or the rebalance before this warning) already started the replacement.
        if first:
            _alert(deps, kind, severity, instance_id, "replacement already under way")
        logger.info("replacement already started", extra={"instance_id": instance_id})
        return "duplicate" if not first else "recorded"

    how = start_replacement(group, instance_id, deps)
    _alert(deps, kind, severity, instance_id, how)
    deps.state.finish_action(deps.group, instance_id, REPLACE)
    return "replacement-started"


def start_replacement(group: Group, instance_id: str, deps: ControlDeps) -> str:
    """Make the group launch a replacement now, while ``instance_id`` keeps serving.

    The plan is recorded before it is carried out and carried out with absolute values, so the retry of a
    reaction that failed half-way does the same thing again instead of adding a second instance.
    """
    record = deps.state.get_instance(deps.group, instance_id)
    how, desired_before = record.replacement, record.desired_before
    if how is None:
        others_leaving = {r.instance_id for r in deps.state.instances(deps.group) if r.doomed or r.at_risk_since}
        healthy_capacity = [
            i
            for i in group.instances
            if i.active and i.instance_id != instance_id and i.instance_id not in others_leaving
        ]
        desired_before = group.desired
        if len(healthy_capacity) >= group.desired:
            how = "group"  # Capacity Rebalancing or an earlier reaction already launched one.
        elif group.desired + 1 <= group.max_size:
            how = "scale-out"
        else:
            how = "detach"  # no headroom: detaching keeps desired capacity, so the group launches at once
        deps.state.record_facts(deps.group, instance_id, replacement=how, desired_before=desired_before)
    if how == "scale-out":
        deps.fleet.set_desired(int(desired_before or group.desired) + 1)
    elif how == "detach" and group.instance(instance_id) is not None:
        deps.fleet.detach_keeping_capacity(instance_id)
    return how


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
