"""Reconcile, every five minutes: the group agrees with what spotkeeper recorded, and a held-back alarm is
decided again.

* The endpoint-down alarm: CloudWatch sends ALARM once. When it came while a replacement was loading within its
  deadline, the fallback was held back; here it is decided again on the newest recorded alarm state, so a
  replacement that misses its deadline falls back to On-Demand without a second alarm event.
* Purchase options: the expected OnDemandBaseCapacity is the floor plus the recorded fallback count. A `sam
  deploy` that changes the launch template writes the template's MixedInstancesPolicy back to the group, its
  OnDemandBaseCapacity (the floor) included, while the recorded fallback runs replicas on On-Demand. The base
  goes back to floor + count (the full policy is written back: AWS merges a partial one, moto replaces the
  whole); not when a return to Spot begun from the recorded mode lowered it (``capacity_journal.begin_return``)
  and has not recorded its switch yet. The other way round - the group has a higher base than that - is only
  alerted: a fallback racing this run may be half-way through.
* Lifecycle hooks: without the launch hook an instance goes InService (and gets traffic) before its TGI serves;
  a missing hook is put back with the template's settings.
* Capacity: a redeploy resets DesiredCapacity to the template's value; a replacement started by scale-out for an
  instance that is still leaving needs its extra unit back, or the group terminates one of the two.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from spotkeeper.alerts import Alert, Severity
from spotkeeper.events import LifecycleHook
from spotkeeper.group import ACTIVE_STATES, Group, NoMixedInstancesPolicy
from spotkeeper.logic.capacity import (
    ENDPOINT_DOWN_REASON,
    _once,
    fall_back_to_on_demand,
    serving_now,
    spot_delivery,
)
from spotkeeper.observability import logger
from spotkeeper.records import SPOT

if TYPE_CHECKING:
    from spotkeeper.deps import CapacityDeps

# The terminate hook as template.yaml declares it: drains are bounded well inside it.
TERMINATE_HOOK_TIMEOUT_SECONDS = 300
# One drift alert per kind per hour: a drift nobody fixes is not news every five minutes.
DRIFT_ALERT_SECONDS = 3600


def decide_held_alarm(deps: CapacityDeps) -> str | None:
    """The endpoint-down alarm is still in ALARM and its fallback was held back: fall back once Spot cannot
    deliver (the replacement missed its deadline, or no launch is pending any more)."""
    endpoint = deps.state.get_endpoint(deps.group)
    if endpoint.alarm_state != "ALARM" or endpoint.alarm_at is None:
        return None
    if endpoint.on_demand_replicas >= deps.env.fallback_room:
        return None  # every replica above the floor is on On-Demand already
    if serving_now(endpoint, deps):
        return None  # serving again; the alarm's OK is on its way
    verdict = spot_delivery(endpoint, deps)
    if verdict.holds:
        return None
    facts = {"alarm_name": deps.env.endpoint_down_alarm_name, "fallback_because": verdict.why}
    return fall_back_to_on_demand(ENDPOINT_DOWN_REASON, endpoint.alarm_at, deps, facts, every_replica=True)


def reconcile(deps: CapacityDeps) -> list[str]:
    """Put the group back in line with the recorded mode. Returns what was repaired (or alerted)."""
    done: list[str] = []
    try:
        group = deps.policy.read()
    except NoMixedInstancesPolicy:
        group = None  # nothing to switch; fall_back_to_on_demand alerts that when it matters
    if group is not None:
        done += reconcile_purchase_options(group, deps)
        done += reconcile_capacity(group, deps)
    done += reconcile_hooks(deps)
    if done:
        logger.info("reconciled", extra={"repaired": done})
    return done


def reconcile_purchase_options(group: Group, deps: CapacityDeps) -> list[str]:
    endpoint = deps.state.get_endpoint(deps.group)
    expected = deps.env.on_demand_floor + endpoint.on_demand_replicas
    if group.on_demand_base < expected:
        if deps.journal.pending_return(endpoint.mode_since) is not None:
            return []  # a return to Spot from this mode lowered it, its switch not recorded yet
        if deps.state.get_endpoint(deps.group).on_demand_replicas != endpoint.on_demand_replicas:
            return []  # a fall-forward recorded a change meanwhile
        deps.policy.set_on_demand_base(expected)
        _alert(
            deps,
            "on-demand-base-restored",
            f"{deps.group}: OnDemandBaseCapacity was {group.on_demand_base} while on On-Demand; set back to {expected}",
            {
                "mode": endpoint.mode,
                "found": group.on_demand_base,
                "restored": expected,
                "on_demand_floor": deps.env.on_demand_floor,
                "on_demand_replicas": endpoint.on_demand_replicas,
                "mode_reason": endpoint.mode_reason,
            },
        )
        return ["on-demand-base"]
    if group.on_demand_base > expected:
        if deps.state.get_endpoint(deps.group).on_demand_replicas != endpoint.on_demand_replicas:
            return []  # a fallback recorded a change meanwhile: no drift
        what = "while spotkeeper runs it on Spot" if endpoint.mode == SPOT else f"while spotkeeper expects {expected}"
        _alert(
            deps,
            "purchase-options-drift",
            f"{deps.group}: OnDemandBaseCapacity is {group.on_demand_base} {what}",
            {"mode": endpoint.mode, "found": group.on_demand_base, "expected": expected},
            severity="warning",
        )
        return ["purchase-options-drift"]
    return []


def reconcile_capacity(group: Group, deps: CapacityDeps) -> list[str]:
    """A scale-out replacement whose predecessor is still in the group needs desired capacity for both."""
    active = {instance.instance_id for instance in group.instances if instance.lifecycle_state in ACTIVE_STATES}
    wanted = 0
    for record in deps.state.instances(deps.group):
        if record.replacement != "scale-out" or record.retired or record.desired_before is None:
            continue
        if (record.doomed or record.at_risk_since or record.marked_unhealthy) and record.instance_id in active:
            wanted = max(wanted, record.desired_before + 1)
    wanted = min(wanted, group.max_size)
    if wanted <= group.desired:
        return []
    deps.policy.set_desired(wanted)
    _alert(
        deps,
        "desired-capacity-restored",
        f"{deps.group}: desired capacity was {group.desired} during a replacement; set back to {wanted}",
        {"found": group.desired, "restored": wanted},
    )
    return ["desired-capacity"]


def reconcile_hooks(deps: CapacityDeps) -> list[str]:
    present = deps.policy.lifecycle_hooks()
    wanted = {
        LifecycleHook.LAUNCH: (math.ceil(deps.env.launch_deadline_seconds), "ABANDON"),
        LifecycleHook.TERMINATE: (TERMINATE_HOOK_TIMEOUT_SECONDS, "CONTINUE"),
    }
    restored = []
    for hook, (timeout, default_result) in wanted.items():
        if present.get(hook) == hook.transition:
            continue
        deps.policy.put_lifecycle_hook(hook.value, hook.transition, timeout, default_result)
        restored.append(hook.value)
    if restored:
        _alert(
            deps,
            "lifecycle-hooks-restored",
            f"{deps.group}: lifecycle hook {', '.join(restored)} was missing; put back",
            {"hooks": restored},
        )
        return ["hooks"]
    return []


def _alert(deps: CapacityDeps, kind: str, subject: str, facts: dict, severity: Severity = "warning") -> None:
    alert = Alert(kind, severity, subject, facts)
    _once(deps, f"{kind}#{math.floor(deps.clock.now() / DRIFT_ALERT_SECONDS)}", lambda: deps.alerts.send(alert))
