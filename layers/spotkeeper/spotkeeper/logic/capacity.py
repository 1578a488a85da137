"""Capacity: fall back to On-Demand when Spot runs dry, forward to Spot when it returns; alarm alerts.

With ``Replicas`` N the group runs ``OnDemandBaseCapacity = floor + fallback count``: the floor (ON_DEMAND_FLOOR)
always, and one On-Demand replica per Spot replica Spot cannot deliver, never more than N. The fallback count is
recorded with the mode (on-demand exactly when it is above 0). With N = 1 and no floor the count is 0 or 1 and
everything below reads as it always did: OnDemandBaseCapacity 1 on a fallback, 0 after the fall-forward.

Fallback (a launch failed for a Spot capacity or price reason, or the endpoint-down alarm fired while Spot is
not delivering - see ``spot_delivery``: a replacement still loading within its deadline, or a stack whose first
instance never served yet, only alerts; so does an alarm that fires once the endpoint serves again, see
``serving_now``; the five-minute schedule decides such a held-back alarm again): the group's
MixedInstancesPolicy gets OnDemandBaseCapacity 1, then the mode switch is recorded with a conditional write
so that, of any number of duplicated, racing or reordered triggers, exactly one switches and alerts. The
policy is written before the mode: a reaction that dies in between is redone by its retry, while the
reverse order would leave a recorded mode the group never got.

Fall-forward (every five minutes, only while on On-Demand, not before MIN_ON_DEMAND_SECONDS): when Spot
placement scores for the group's types in its zones reach SPOT_SCORE_THRESHOLD (or, without scores, the
current Spot prices say Spot is offered and not scarce), OnDemandBaseCapacity goes down by the replicas that return,
and that is all: "An update to this setting means a gradual replacement of instances to adjust the current
On-Demand Instance levels. When replacing instances, Amazon EC2 Auto Scaling launches new instances before
terminating the previous ones" (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/
API_InstancesDistribution.html). Auto Scaling itself launches one Spot instance per On-Demand instance above the
new base, holds it in the launch hook until its TGI serves, and only then terminates an On-Demand instance, through
the terminate hook (drain; the Elastic IP moves first when it is on it). The Spot replicas are not touched, and
spotkeeper terminates nothing, so no duplicated or reordered event can retire anything twice. An instance refresh
on top (what this did before) replaced every instance, the healthy Spot replicas too: a full launch-to-ready each,
for nothing. A Spot launch that fails meanwhile is a Spot shortage like any other: the fallback raises the base
again, Auto Scaling then has no On-Demand instance too many and keeps it, and the pool goes in the failed-pool cache.
A Spot replacement reclaimed (or abandoned) before it serves only costs a second launch: the On-Demand instance
serves until a replacement is InService. One thing Auto Scaling may still do on its own: when the Spot replacement
landed in another zone than the On-Demand instance it replaced, the zones are unbalanced and AZ rebalancing (launch
before terminate too) replaces one instance of the fuller zone.

A trigger older than the last mode switch is stale and changes nothing, so a late launch failure from the
Spot era cannot undo a fall-forward that came after it.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from spotkeeper.alerts import Alert, Severity
from spotkeeper.events import AlarmStateChange, LaunchUnsuccessful, ScheduledEvent
from spotkeeper.group import Group, NoMixedInstancesPolicy
from spotkeeper.market import (
    ON_DEMAND_PRICES_AS_OF,
    ON_DEMAND_PRICES_REGION,
    FailedPool,
    MarketUnavailable,
    ScoresUnavailable,
    SpotPrice,
    on_demand_price,
)
from spotkeeper.observability import MetricName, logger, metrics
from spotkeeper.records import ON_DEMAND, SPOT, Endpoint, InstanceRecord

if TYPE_CHECKING:
    from spotkeeper.deps import CapacityDeps

CapacityEvent = LaunchUnsuccessful | AlarmStateChange | ScheduledEvent

# A Spot price at or above this share of the On-Demand price means Spot is scarce, not back.
SCARCE_PRICE_SHARE = 0.9
# A fall-forward alert that failed to go out is retried by the next scheduled runs for this long.
ANNOUNCE_RETRY_SECONDS = 3600
# A fallback that lost a race to another one decides again on what that one recorded, this many times.
RACING_DECISIONS = 3


def react_to_capacity_event(event: LaunchUnsuccessful | AlarmStateChange | ScheduledEvent, deps: CapacityDeps) -> str:
    if isinstance(event, LaunchUnsuccessful):
        outcome = on_launch_unsuccessful(event, deps)
    elif isinstance(event, AlarmStateChange):
        outcome = on_alarm_state_change(event, deps)
    else:
        outcome = on_schedule(deps)
    publish_mode(deps)
    return outcome


def on_schedule(deps: CapacityDeps) -> str:
    """Every five minutes: decide a held-back endpoint-down alarm again, fall forward, reconcile the group."""
    from spotkeeper.logic.reconcile import decide_held_alarm, reconcile  # reconcile builds on this module

    outcome = decide_held_alarm(deps) or fall_forward_if_spot_is_back(deps)
    repaired = reconcile(deps)
    return f"{outcome}; reconciled {', '.join(repaired)}" if repaired else outcome


def publish_mode(deps: CapacityDeps) -> None:
    endpoint = deps.state.get_endpoint(deps.group)
    on_demand = endpoint.mode == ON_DEMAND
    metrics.add_metric(name=MetricName.CAPACITY_MODE, unit="Count", value=1 if on_demand else 0)
    on_demand_for = max(0.0, deps.clock.now() - (endpoint.mode_since or deps.clock.now())) if on_demand else 0.0
    metrics.add_metric(name=MetricName.FALLBACK_ACTIVE, unit="Seconds", value=round(on_demand_for, 3))


# --- launch failures ------------------------------------------------------------------------------
# Error codes Auto Scaling quotes in a failed launch's StatusMessage when Spot has no capacity for the
# request or will not sell at the price asked: EC2 API codes and Spot request status codes.
SPOT_SHORTAGE_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "UnfulfillableCapacity",
        "MaxSpotInstanceCountExceeded",
        "SpotMaxPriceTooLow",
        "capacity-not-available",
        "capacity-oversubscribed",
        "price-too-low",
    }
)
# The same reasons when only prose is quoted ("There is no Spot capacity available that matches your
# request", "We currently do not have sufficient g5.2xlarge capacity ...", "Your Spot request price of
# 0.5 is lower than the minimum required Spot request fulfillment price of 0.6").
SPOT_SHORTAGE_PHRASES = (
    "no spot capacity",
    "no capacity available",
    "not have sufficient",
    "insufficient capacity",
    "spot instance count exceeded",
    "price too low",
    "lower than the minimum required spot",
)
# "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity ..."
_QUOTED = re.compile(r"Could not launch (?P<market>Spot|On-Demand) Instances\.\s*(?P<code>[A-Za-z][\w.-]*)\s+-")
_ANY_CODE = re.compile(r"\b(" + "|".join(re.escape(code) for code in sorted(SPOT_SHORTAGE_CODES)) + r")\b")


@dataclass(frozen=True)
class LaunchFailure:
    code: str | None  # the EC2 error code quoted in the message, when there is one
    market: str | None  # "Spot" or "On-Demand", when the message says which launch failed
    spot_shortage: bool  # Spot had no capacity or would not sell at our price: On-Demand can help

    @property
    def capacity(self) -> bool:
        return self.code in SPOT_SHORTAGE_CODES


def classify_launch_failure(message: str) -> LaunchFailure:
    quoted = _QUOTED.search(message)
    market = quoted.group("market") if quoted else None
    code = quoted.group("code") if quoted else None
    if code is None and (found := _ANY_CODE.search(message)):
        code = found.group(1)
    lowered = message.lower()
    shortage = code in SPOT_SHORTAGE_CODES or (code is None and any(p in lowered for p in SPOT_SHORTAGE_PHRASES))
    # An On-Demand launch that failed for capacity is not helped by more On-Demand.
    return LaunchFailure(code=code, market=market, spot_shortage=shortage and market != "On-Demand")


def on_launch_unsuccessful(event: LaunchUnsuccessful, deps: CapacityDeps) -> str:
    detail = event.detail
    if detail.group_name != deps.group:
        logger.warning("launch failure of another group", extra={"group": detail.group_name})
        return "ignored"
    failure = classify_launch_failure(detail.status_message)
    facts = {
        "status_message": detail.status_message,
        "code": failure.code,
        "market": failure.market,
        "activity_id": detail.activity_id,
        "zone": detail.details.get("Availability Zone"),
        "subnet": detail.details.get("Subnet ID"),
    }
    if failure.spot_shortage:
        remember_failed_pool(detail.status_message, facts["zone"], event.time.timestamp(), deps)
        return fall_back_to_on_demand(
            f"launch-unsuccessful: {failure.code or 'no Spot capacity'}", event.time.timestamp(), deps, facts
        )
    return alert_launch_failure(failure, facts, event.time.timestamp(), deps)


# "We currently do not have sufficient g5.2xlarge capacity in the Availability Zone you requested (us-east-1a)."
_NAMED_TYPE = re.compile(r"sufficient (?P<type>[a-z][a-z0-9-]*\.[a-z0-9]+) capacity")


def remember_failed_pool(message: str, zone: str | None, failed_at: float, deps: CapacityDeps) -> None:
    """Keep the pool (zone, and the type when the message names one) out of the return-to-Spot decision.

    For FAILED_POOL_SECONDS, never longer than MIN_ON_DEMAND_SECONDS: the failures that caused a fallback have
    aged out of the cache by the time that fallback may end, and from then on the placement score is fresher
    evidence about them. What the cache keeps out are the failures seen since - Auto Scaling still failing to
    place Spot in a pool (an Availability Zone rebalance, a replacement) while the fallback covers for it.
    """
    keep = min(deps.env.failed_pool_seconds, deps.env.min_on_demand_seconds)
    if not zone or keep <= 0:
        return
    if deps.state.get_endpoint(deps.group).on_demand_replicas >= deps.env.fallback_room:
        # Every replica above the floor runs On-Demand: the group launches no Spot, this reports an attempt made
        # before the switch (a late or replayed event), which the minimum time on On-Demand covers already.
        return
    named = _NAMED_TYPE.search(message)
    pool = FailedPool(zone, named.group("type") if named else None, failed_at + keep)
    deps.journal.record_failed_pool(pool)


def alert_launch_failure(failure: LaunchFailure, facts: dict, happened_at: float, deps: CapacityDeps) -> str:
    """Alert, without falling back: On-Demand does not fix a bad AMI, a missing permission or a quota.

    Auto Scaling retries a failed launch over and over; one alert per kind of failure per hour is enough.
    """
    severity: Severity = "critical" if failure.capacity else "warning"
    summary = _first_sentence(facts["status_message"])
    # SNS cuts subjects at 100 characters: the reason first, the group and the full message in the body.
    quoted = f" ({failure.code})" if failure.code else ""
    alert = Alert("launch-failed", severity, f"Launch failed{quoted}: {summary}", {**facts, "fallback": False})
    kind = failure.code or hashlib.sha256(summary.encode()).hexdigest()[:16]
    key = f"launch-failed#{kind}#{math.floor(happened_at / 3600)}"
    return "alerted" if _once(deps, key, lambda: deps.alerts.send(alert)) else "alert-suppressed"


def _first_sentence(message: str) -> str:
    sentence = message.split(" Launching EC2 instance failed")[0].removesuffix(".")
    if failure_quoted := _QUOTED.search(sentence):
        sentence = sentence[failure_quoted.end() :].strip()  # the code is in the subject already
    return sentence if len(sentence) <= 200 else sentence[:197] + "..."


# --- fallback -------------------------------------------------------------------------------------
def fall_back_to_on_demand(
    reason: str, happened_at: float, deps: CapacityDeps, facts: dict, *, every_replica: bool = False
) -> str:
    """Put on On-Demand one replica per Spot replica that Spot cannot deliver (``every_replica``: all of them,
    the endpoint is down), never more than the replicas above the floor."""
    room = deps.env.fallback_room
    for _ in range(RACING_DECISIONS):
        endpoint = deps.state.get_endpoint(deps.group)
        held = endpoint.on_demand_replicas
        if held >= room:
            if endpoint.mode_reason == reason:
                announce_fallback(endpoint, facts, deps)  # a retry of the switching reaction whose alert failed
            return "already-on-demand"
        if _before_last_switch(happened_at, endpoint):
            logger.info("trigger is older than the last switch", extra={"reason": reason, "at": happened_at})
            return "stale"
        try:
            wanted = room if every_replica else on_demand_replicas_needed(held, room, deps)
            if wanted == 0:
                logger.info("Spot delivered in another pool: no fallback", extra={"reason": reason})
                return "spot-delivered"
            if wanted <= held:
                # The fallback already covers every Spot replica missing (a retry of a covered launch).
                return "already-on-demand"
            deps.policy.raise_on_demand_base(deps.env.on_demand_floor + wanted)
        except NoMixedInstancesPolicy as error:
            alert = Alert("fallback-impossible", "critical", f"Cannot fall back to On-Demand: {error}", facts)
            key = f"fallback-impossible#{math.floor(happened_at / 3600)}"
            _once(deps, key, lambda alert=alert: deps.alerts.send(alert))
            return "cannot-fall-back"
        now = deps.clock.now()
        if deps.state.set_mode(
            deps.group, ON_DEMAND, reason, now, endpoint.mode, on_demand_replicas=wanted, expected_replicas=held
        ):
            announce_fallback(deps.state.get_endpoint(deps.group), facts, deps)
            return "fell-back"
        # A racing trigger changed the count first (it alerts): decide again on what it recorded.
    return "already-on-demand"


def on_demand_replicas_needed(held: int, room: int, deps: CapacityDeps) -> int:
    """How many replicas the fallback should run on On-Demand, after a Spot launch failed.

    One replica (no floor) needs no look at the group: the failure shows its only Spot replica is missing.
    """
    if held == 0 and room == 1:
        return 1
    group = deps.policy.read()
    active = [i.instance_id for i in group.instances if i.active]
    spot = deps.policy.spot_instance_ids(active) if active else set()
    records = {record.instance_id: record for record in deps.state.instances(deps.group)}
    holding = sum(1 for i in active if i in spot and not leaving(records.get(i)))
    return fallback_count(held, room, holding, short=len(active) < group.desired)


def leaving(record: InstanceRecord | None) -> bool:
    """Interrupted, warned by a rebalance recommendation, retired or marked unhealthy: no longer capacity."""
    return record is not None and (
        record.doomed or record.at_risk_since is not None or record.retired or record.marked_unhealthy
    )


def fallback_count(held: int, room: int, spot_holding: int, *, short: bool = True) -> int:
    """The fallback count after a Spot shortage: ``held`` now, ``room`` replicas above the floor, ``spot_holding``
    Spot instances of the group that are active and not leaving, ``short`` whether the group still has fewer
    active instances than it wants.

    The group wants ``room - held`` Spot replicas; each one short gets an On-Demand replica. With nothing on
    On-Demand yet and the group still short, the failure itself shows at least one Spot replica is missing (its
    predecessor's record may not have arrived yet); once something is, only the count decides, so retries of the
    same failed launch never add a second On-Demand replica for one missing Spot replica. A group no longer short
    got its Spot instance elsewhere (Auto Scaling tried another zone or type after the failure): only the count.
    """
    missing = max(0, room - held - spot_holding)
    if held == 0 and short:
        missing = max(missing, 1)
    return min(room, held + missing)


def announce_fallback(endpoint: Endpoint, facts: dict, deps: CapacityDeps) -> None:
    replicas, count = deps.env.replicas, endpoint.on_demand_replicas
    which = f" for {count} of {replicas} replicas" if replicas > 1 else ""
    alert = Alert(
        "fallback-on-demand",
        "critical",
        f"{deps.group} falls back to On-Demand{which} ({endpoint.mode_reason})",
        {
            **facts,
            "reason": endpoint.mode_reason,
            "mode": ON_DEMAND,
            "since": endpoint.mode_since,
            "on_demand_base_capacity": deps.env.on_demand_floor + count,
            "on_demand_replicas": count,
            "replicas": replicas,
            "fall_forward_after_seconds": deps.env.min_on_demand_seconds,
        },
    )
    _once(deps, f"fallback#{endpoint.mode_since}", lambda: deps.alerts.send(alert))


def _before_last_switch(happened_at: float, endpoint: Endpoint) -> bool:
    # Event times have whole seconds: compare at that resolution.
    return endpoint.mode_since is not None and happened_at < math.floor(endpoint.mode_since)


# --- alarms ---------------------------------------------------------------------------------------
def on_alarm_state_change(event: AlarmStateChange, deps: CapacityDeps) -> str:
    detail = event.detail
    state = detail.state.value
    endpoint_down = detail.alarm_name == deps.env.endpoint_down_alarm_name
    if endpoint_down:
        # Newest state wins: a late or replayed event cannot overwrite a later transition.
        deps.state.record_endpoint_alarm(deps.group, state, alarm_time(event))
    previous = detail.previous_state.value if detail.previous_state else None
    if state not in ("ALARM", "OK") or (state == "OK" and previous == "INSUFFICIENT_DATA"):
        # INSUFFICIENT_DATA -> OK is a new alarm's (or a new stack's) first evaluation, not a recovery.
        logger.info("alarm state not alerted", extra={"alarm": detail.alarm_name, "state": state})
        return "ignored"
    outcome, action, why = "alerted", None, None
    if endpoint_down and state == "ALARM":
        # Decide first, so the alert says what actually happened.
        outcome, why = react_to_endpoint_down(
            deps, {"alarm_name": detail.alarm_name, "alarm_reason": detail.state.reason}
        )
        action = FALLBACK_OUTCOMES.get(outcome, outcome)
    alert = alarm_alert(event, action, why if action else None)
    # One alert per transition, however often the event is delivered.
    key = f"alarm#{detail.alarm_name}#{state}#{detail.state.timestamp or event.id}"
    _once(deps, key, lambda: deps.alerts.send(alert))
    return outcome


def alarm_time(event: AlarmStateChange) -> float:
    """When the alarm entered its state (CloudWatch's ``state.timestamp``), else when the event was sent."""
    stamp = event.detail.state.timestamp
    if stamp:
        for layout in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z"):
            try:
                return datetime.strptime(stamp, layout).timestamp()
            except ValueError:
                continue
    return event.time.timestamp()


def react_to_endpoint_down(deps: CapacityDeps, facts: dict) -> tuple[str, str]:
    """The endpoint-down alarm is (still) in ALARM: fall back to On-Demand only when Spot cannot deliver.

    Judged on the newest recorded alarm state, not on the event at hand, so a replay of an old ALARM after the
    recovery changes nothing. Returns (outcome, why).
    """
    endpoint = deps.state.get_endpoint(deps.group)
    if endpoint.alarm_state != "ALARM":
        return "recovered", f"a later alarm state is recorded ({endpoint.alarm_state})"
    alarm_at = endpoint.alarm_at or 0.0
    if endpoint.on_demand_replicas >= deps.env.fallback_room:
        # Nothing to switch; a retry of the switching reaction whose alert failed sends it now.
        outcome = fall_back_to_on_demand(ENDPOINT_DOWN_REASON, alarm_at, deps, facts, every_replica=True)
        return outcome, "already on On-Demand"
    if serves := serving_now(endpoint, deps):
        return "recovering", serves
    verdict = spot_delivery(endpoint, deps)
    if verdict.holds:
        logger.info("endpoint down, not falling back", extra={"why": verdict.why})
        return verdict.outcome, verdict.why
    # No replica serves: every one of them is missing.
    facts = {**facts, "fallback_because": verdict.why}
    outcome = fall_back_to_on_demand(ENDPOINT_DOWN_REASON, alarm_at, deps, facts, every_replica=True)
    return outcome, verdict.why


ENDPOINT_DOWN_REASON = "endpoint-down alarm"
# The probe runs every minute: a last sign of health this recent, with no probe failed since, is "serving now"
# (two probe periods and a margin, so one late or lost probe run does not count against it).
SERVING_EVIDENCE_SECONDS = 150


def serving_now(endpoint: Endpoint, deps: CapacityDeps) -> str | None:
    """Does the endpoint serve right now, although its down alarm is in ALARM? Says why, or None.

    The alarm judges the minutes before it fired: a replacement that started serving near their end (its
    promotion checked /health and /info) leaves the alarm to fire after the outage is over. The recorded serving
    instance serves now when it is not leaving, no probe failed since its last success, and its last sign of health
    (promotion or successful probe) came after the alarm or within SERVING_EVIDENCE_SECONDS.
    """
    instance_id = endpoint.serving_instance_id
    if instance_id is None or endpoint.serving_since is None:
        return None
    record = deps.state.get_instance(deps.group, instance_id)
    if record.probe_failures or record.doomed or record.draining_since or record.marked_unhealthy or record.retired:
        return None
    seen = max(endpoint.serving_since, record.probe_ok_at or 0.0)
    if seen >= (endpoint.alarm_at or 0.0):
        return f"{instance_id} serves again since the alarm"
    age = deps.clock.now() - seen
    if age <= SERVING_EVIDENCE_SECONDS:
        return f"{instance_id} serves again: ready {max(0, math.floor(age))} s ago, no probe failed since"
    return None


@dataclass(frozen=True)
class SpotDelivery:
    holds: bool  # True: Spot is still delivering (or nothing has served yet): the alarm does not fall back
    outcome: str
    why: str


def spot_delivery(endpoint: Endpoint, deps: CapacityDeps) -> SpotDelivery:
    """Is Spot still delivering a replacement for the down endpoint?

    A replacement whose launch is recorded and still within its deadline is loading its model: no reason to
    fall back. Before any instance of the stack ever served (first deploy) the endpoint-down alarm only alerts:
    the first launch is still loading, and a Spot shortage shows as a failed launch, which falls back on its own.
    Past the deadline, or with no launch recorded at all, Spot is not delivering: fall back.
    """
    if not endpoint.ever_served:
        return SpotDelivery(True, "not-yet-served", "no instance has served yet")
    now = deps.clock.now()
    launches = [launch for launch in deps.state.waiting_launches(deps.group) if launch.status != "abandoned"]
    overdue = []
    for launch in launches:
        if deps.state.get_instance(deps.group, launch.instance_id).doomed:
            continue  # interrupted while loading: it will never serve
        if launch.status == "continued" or now < launch.deadline:
            left = max(0, math.ceil(launch.deadline - now))
            return SpotDelivery(
                True, "replacement-loading", f"replacement {launch.instance_id} loading ({left} s left)"
            )
        overdue.append(launch.instance_id)
    if overdue:
        return SpotDelivery(False, "", f"launch deadline passed for {', '.join(overdue)}")
    return SpotDelivery(False, "", "no replacement launch pending")


FALLBACK_OUTCOMES = {
    "fell-back": "falling back to On-Demand",
    "already-on-demand": "already on On-Demand",
    "stale": "older than the last switch to Spot",
    "cannot-fall-back": "no fallback possible",
    "replacement-loading": "replacement loading, no fallback",
    "not-yet-served": "nothing served yet, no fallback",
    "recovering": "serving again, no fallback",
    "recovered": "recovered since, no fallback",
}


def alarm_alert(event: AlarmStateChange, action: str | None = None, why: str | None = None) -> Alert:
    detail = event.detail
    name, state = detail.alarm_name, detail.state.value
    previous = detail.previous_state.value if detail.previous_state else None
    configuration = detail.configuration or {}
    description = configuration.get("description") if isinstance(configuration, dict) else None
    facts = {
        "alarm_name": name,
        "state": state,
        "previous_state": previous,
        "reason": detail.state.reason,
        "changed_at": detail.state.timestamp,
        "description": description,
        **({"action": action, "why": why} if action else {}),
    }
    if state == "ALARM":
        severity: Severity = "critical" if action else "warning"
        return Alert("alarm-raised", severity, f"{name} is in ALARM{f': {action}' if action else ''}", facts)
    recovered = " again" if previous == "ALARM" else ""
    return Alert("alarm-ok", "info", f"{name} is OK{recovered}", facts)


# --- fall-forward ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpotOutlook:
    likely: bool
    signal: str  # "placement-score" or "spot-price"
    summary: str
    best_score: int | None = None
    prices: tuple[SpotPrice, ...] = ()


def fall_forward_if_spot_is_back(deps: CapacityDeps) -> str:
    endpoint = deps.state.get_endpoint(deps.group)
    now = deps.clock.now()
    held = endpoint.on_demand_replicas
    just_switched = endpoint.mode_since is not None and now - endpoint.mode_since < ANNOUNCE_RETRY_SECONDS
    if held == 0:
        if just_switched and (endpoint.mode_reason or "").startswith("spot-back"):
            announce_fall_forward(endpoint, None, None, deps)  # a no-op unless the first attempt failed
        return "on-spot"
    if just_switched and (endpoint.mode_reason or "").startswith("spot-back"):
        announce_fall_forward(endpoint, None, None, deps)  # part of the replicas went back to Spot
    on_demand_for = now - (endpoint.mode_since or 0.0)
    if on_demand_for < deps.env.min_on_demand_seconds:
        return "too-soon"
    # A return begun from this mode whose run died before recording the switch: carry out what it decided.
    begun = deps.journal.pending_return(endpoint.mode_since)
    group, outlook = None, None
    if begun is None:
        group = deps.policy.read()
        if not group.instance_types:
            logger.warning("the group names no instance types: Spot placement cannot be scored")
            return "spot-unlikely"
        returning, outlook = replicas_spot_will_hold(group, held, deps, now)
        logger.info(
            "Spot outlook",
            extra={"likely": outlook.likely, "signal": outlook.signal, "why": outlook.summary, "returning": returning},
        )
        if not returning:
            return "spot-unlikely"
        # Recorded before the base is lowered, so the reconcile never puts back a base a return lowered.
        begun = deps.journal.begin_return(endpoint.mode_since, held - returning, f"spot-back: {outlook.summary}")
    keep, reason = begun
    # Auto Scaling replaces held - keep On-Demand instances with Spot ones, launch before terminate. Absolute, so a
    # retry writes the same value again.
    deps.policy.set_on_demand_base(deps.env.on_demand_floor + keep)
    mode = ON_DEMAND if keep else SPOT
    if not deps.state.set_mode(
        deps.group, mode, reason, now, expected_mode=ON_DEMAND, on_demand_replicas=keep, expected_replicas=held
    ):
        return "already-on-spot"  # a racing run switched first; it alerts
    announce_fall_forward(deps.state.get_endpoint(deps.group), group, (held - keep, outlook), deps)
    return "returning-to-spot"


def replicas_spot_will_hold(group: Group, held: int, deps: CapacityDeps, now: float) -> tuple[int, SpotOutlook]:
    """How many of the ``held`` On-Demand replicas go back to Spot: all of them if the placement scores say Spot
    holds the whole Spot share, else one (the decision is per replica) if it holds one more, else none.

    Pools (zone, instance type) whose launch failed within the cache's time are left out of the decision.
    """
    room = deps.env.fallback_room
    failed = [pool for pool in deps.journal.failed_pools() if pool.until > now]
    outlook = SpotOutlook(False, "placement-score", "not asked")
    for returning in dict.fromkeys((held, 1)):
        # The Spot replicas the group would run once these return.
        outlook = spot_outlook(group, deps, now, target=room - held + returning, failed=failed)
        if outlook.likely:
            return returning, outlook
        if outlook.signal != "placement-score":
            break  # prices and the failed pools do not depend on how many return
    return 0, outlook


def spot_outlook(
    group: Group, deps: CapacityDeps, now: float, target: int = 1, failed: list[FailedPool] | tuple = ()
) -> SpotOutlook:
    """Will Spot hold ``target`` replicas of the group's types in its zones, the pools that just failed left out?

    Placement scores are per zone for the whole list of types: a type that just failed (in any zone) is left out
    of the list asked, a zone where every type failed is left out of the zones.
    """
    blocked_zones = {pool.zone for pool in failed if pool.instance_type is None}
    failed_types = {pool.instance_type for pool in failed if pool.instance_type}
    types = tuple(kind for kind in group.instance_types if kind not in failed_types)
    zones = [zone for zone in deps.market.zones(group.subnet_ids) if zone.name not in blocked_zones]
    if failed and (not types or not zones):
        pools = ", ".join(sorted(f"{pool.zone}/{pool.instance_type or '*'}" for pool in failed))
        return SpotOutlook(False, "failed-pools", f"every pool of the group failed recently ({pools})")
    zone_ids = {zone.zone_id for zone in zones}
    threshold = deps.env.spot_score_threshold
    try:
        scores = [s for s in deps.market.placement_scores(types, target) if s.zone_id in zone_ids]
    except ScoresUnavailable as error:
        scores, unavailable = [], str(error)
    else:
        unavailable = "no score for the group's zones"
    if scores:
        best = max(score.score for score in scores)
        verdict = ">=" if best >= threshold else "<"
        replicas = f" for {target} Spot replicas" if target != 1 else ""
        summary = f"placement score {best} {verdict} {threshold}{replicas}"
        return SpotOutlook(best >= threshold, "placement-score", summary, best)
    prices = [
        price
        for price in deps.market.current_prices(types, zones, now)
        if not any(pool.zone == price.zone and pool.instance_type == price.instance_type for pool in failed)
    ]
    affordable = [
        p
        for p in prices
        if (listed := on_demand_price(p.instance_type)) is None or p.usd_per_hour < listed * SCARCE_PRICE_SHARE
    ]
    if affordable:
        cheapest = affordable[0]
        summary = f"scores unavailable ({unavailable}); Spot {cheapest.instance_type} at ${cheapest.usd_per_hour:.4f}/h"
        return SpotOutlook(True, "spot-price", summary, prices=tuple(prices))
    return SpotOutlook(False, "spot-price", f"scores unavailable ({unavailable}); no affordable Spot price")


def announce_fall_forward(
    endpoint: Endpoint,
    group: Group | None,
    started: tuple[int, SpotOutlook | None] | None,
    deps: CapacityDeps,
) -> None:
    def send() -> None:
        capacity = group or deps.policy.read()
        returning, outlook = started if started else (None, None)
        saving = hourly_saving(capacity, outlook.prices if outlook else (), deps)
        worth = f", saving about ${saving['usd_per_hour']:.2f}/h" if saving.get("usd_per_hour") is not None else ""
        replicas, keep = deps.env.replicas, endpoint.on_demand_replicas
        # SNS cuts subjects at 100 characters: short, the saving last.
        subject = f"Back on Spot: Auto Scaling replaces the On-Demand instance{worth}"
        if replicas > 1:
            spot = replicas - deps.env.on_demand_floor - keep
            which = f" ({returning} On-Demand replaced)" if returning else ""
            subject = f"Back on Spot for {spot} of {replicas} replicas{which}{worth}"
        deps.alerts.send(
            Alert(
                "fall-forward-spot",
                "info",
                subject,
                {
                    "reason": endpoint.mode_reason,
                    "mode": endpoint.mode,
                    "on_demand_replicas": keep,
                    "on_demand_base_capacity": deps.env.on_demand_floor + keep,
                    # Auto Scaling replaces this many On-Demand instances with Spot ones, launch before terminate.
                    "replacing_on_demand": returning,
                    "since": endpoint.mode_since,
                    "signal": outlook.signal if outlook else None,
                    "best_score": outlook.best_score if outlook else None,
                    "saving": saving,
                },
            )
        )

    _once(deps, f"fall-forward#{endpoint.mode_since}", send)


def hourly_saving(group: Group, known_prices: tuple[SpotPrice, ...], deps: CapacityDeps) -> dict:
    """On-Demand list price of the instance being replaced against the Spot price its successor will cost."""
    serving_type = next(
        (i.instance_type for i in group.instances if i.lifecycle_state == "InService" and i.instance_type), None
    )
    instance_type = serving_type or (group.instance_types[0] if group.instance_types else None)
    listed = on_demand_price(instance_type)
    prices = list(known_prices)
    if not prices:
        try:
            zones = deps.market.zones(group.subnet_ids)
            prices = deps.market.current_prices(group.instance_types, zones, deps.clock.now())
        except MarketUnavailable as error:
            # The saving only decorates the alert; the switch has happened either way.
            logger.warning("Spot prices unavailable for the saving", extra={"why": str(error)})
    # The group's Spot allocation favours the cheap pools with capacity: the cheapest current price is what
    # the replacement most likely runs at.
    spot = min(prices, key=lambda p: p.usd_per_hour) if prices else None
    saving: dict = {
        "on_demand_instance_type": instance_type,
        "on_demand_usd_per_hour": listed,
        "on_demand_prices_as_of": f"{ON_DEMAND_PRICES_AS_OF} ({ON_DEMAND_PRICES_REGION})",
        "spot_instance_type": spot.instance_type if spot else None,
        "spot_zone": spot.zone if spot else None,
        "spot_usd_per_hour": spot.usd_per_hour if spot else None,
        "usd_per_hour": None,
    }
    if listed is not None and spot is not None:
        saving["usd_per_hour"] = round(listed - spot.usd_per_hour, 4)
    return saving


# --- once -----------------------------------------------------------------------------------------
def _once(deps: CapacityDeps, key: str, action: Callable[[], None]) -> bool:
    """Run ``action`` once for ``key`` (a failed run does not count). True when this call ran it."""
    return deps.journal.once(key, action)
