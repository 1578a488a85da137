"""The drill's four scenarios: what is played, when, and what each must show.

Times are simulated seconds after the clients start (t = 0), once the first instance serves. Every instance's
launch-to-ready is the drill's ``load_seconds`` (the launch-to-ready model's, or ``--load-seconds``); Spot's warning
comes two minutes before it reclaims. The bounds follow from it; under ``--chaos`` they add what the chaos cost
(how late the warning was delivered; a probe period and a late schedule when a launch event was lost).
"""

from __future__ import annotations

from typing import Any

from spotkeeper_local.aws_events import rebalance_recommendation
from spotkeeper_local.delivery_chaos import MAX_DELAY
from spotkeeper_local.drill_world import DrillWorld
from spotkeeper_local.embedded_aws import EmbeddedAws, LocalTemplate
from spotkeeper_local.report import Check, DrillError, ScenarioResult, client_stats

WARNING_AT = 30.0
SPOT_NOTICE = 120.0
# How much longer than the replacement's own load time a failover may leave clients without an answer: one
# readiness poll (READY_POLL_SECONDS, 5 s) and a request interval, rounded up.
FAILOVER_SLACK = 10.0
SETTLE = 90.0  # what is left to see after the last scripted event
# How often the health probe runs: it finishes a launch whose lifecycle event was lost.
PROBE_PERIOD = 60.0
# The rebalance recommendation comes this long before Spot reclaims, beyond the launch-to-ready: room for the
# probe to promote a replacement whose launch event was lost, its schedule delivered late.
REBALANCE_MARGIN = PROBE_PERIOD + MAX_DELAY
WARNING = "EC2 Spot Instance Interruption Warning"
LAUNCH_EVENT = "EC2 Instance-launch Lifecycle Action"


class ScenarioError(DrillError):
    """The scenario could not get to the point it is about (e.g. the first instance never served)."""


def play(
    name: str,
    aws: EmbeddedAws,
    template: LocalTemplate,
    parameters: dict[str, str],
    options: Any,
    first_load_seconds: float | None = None,
) -> ScenarioResult:
    scenario = {
        "interruption": interruption,
        "rebalance": rebalance,
        "capacity": capacity_outage,
        "baseline": baseline,
    }[name]
    spotkeeper = name != "baseline"
    world = DrillWorld.deploy(
        aws,
        template,
        f"drill-{name}",
        parameters,
        options.load_seconds,
        spotkeeper=spotkeeper,
        first_load_seconds=first_load_seconds,
        chaos=getattr(options, "chaos", None),
    )
    if getattr(options, "serial_delivery", False):
        world.concurrency = 1
    try:
        return scenario(world, options)
    finally:
        world.close()


def _clients(options: Any) -> int:
    """``--clients K``: concurrent clients (1 by default: the scenarios' own figures)."""
    return int(getattr(options, "clients", 1) or 1)


# -- shared steps -----------------------------------------------------------------------------------------
def _serving_ready(world: DrillWorld) -> str | None:
    serving = world.endpoint().get("serving_instance_id")
    server = world.fleet.servers.get(serving or "")
    if serving and server is not None and server.state == "ready" and world.eip_holder() == serving:
        return serving
    return None


def _warm_up(world: DrillWorld) -> str:
    """The stack is up: its first instance launches, loads the model and is made serving by spotkeeper."""
    if not world.run_until(lambda: _serving_ready(world) is not None, world.load_seconds + 900):
        raise ScenarioError("the first instance never became the serving instance")
    serving = _serving_ready(world)
    assert serving is not None
    return serving


def _launched_after(world: DrillWorld, t: float) -> str | None:
    after = [(at, i) for i, at in world.launched_at.items() if world.t(at) >= t]
    return min(after)[1] if after else None


def _launch_to_ready(world: DrillWorld, instance_id: str | None) -> float | None:
    if instance_id is None or instance_id not in world.ready_at:
        return None
    return world.ready_at[instance_id] - world.launched_at[instance_id]


def _chaos_allowance(world: DrillWorld, warned: str | None, replacement: str | None) -> tuple[float, str]:
    """What the delivery chaos cost a failover: the warning's delivery delay, and one probe period plus a late
    schedule when the replacement's launch event was lost (the probe, not the launch hook, promotes it)."""
    if world.chaos is None:
        return 0.0, ""
    late = (world.chaos.first_delay(WARNING, warned) or 0.0) if warned else 0.0
    lost = replacement is not None and world.chaos.lost(LAUNCH_EVENT, replacement)
    allowance = late + (PROBE_PERIOD + MAX_DELAY if lost else 0.0)
    why = f" (incl. chaos {allowance:.0f} s: warning {late:.0f} s late" + (", launch event lost)" if lost else ")")
    return allowance, why


def _no_fallback(world: DrillWorld, since: float) -> Check:
    """The replacement is Spot's to deliver: no On-Demand fallback while it loads (issue 15)."""
    fallbacks = [a for a in world.alerts if a.get("event") == "fallback-on-demand" and a["t"] >= since]
    on_demand = [t for t, mode in world.mode_log if mode == "on-demand" and t >= since]
    return Check(
        "no On-Demand fallback while the replacement loads",
        not fallbacks and not on_demand,
        "mode spot throughout, no fallback-on-demand alert"
        if not fallbacks and not on_demand
        else f"mode on-demand from t={on_demand[0] if on_demand else '?'}s, {len(fallbacks)} fallback alerts",
    )


def _endpoint_down_alerted(world: DrillWorld, since: float, outage: float) -> Check:
    """The stack's endpoint-down alarm went to ALARM while nothing served, and ops got its alert (issue 15).

    Expected once the outage outlasts the alarm: its M unhealthy one-minute datapoints, plus a probe period for
    the first unhealthy probe and one for CloudWatch's evaluation after the period closes. A shorter one may pass
    unalarmed."""
    name = world.stack.function_env["capacity"]["ENDPOINT_DOWN_ALARM_NAME"]
    evaluator = world.alarms.evaluator if world.alarms is not None else None
    definition = evaluator.alarms.get(name) if evaluator is not None else None
    needs = definition.period * definition.datapoints_to_alarm + 2 * PROBE_PERIOD if definition else 0.0
    transitions = evaluator.transitions if evaluator is not None else []
    fired = [world.t(c.at) for c in transitions if c.alarm == name and c.state == "ALARM" and world.t(c.at) >= since]
    alerted = [a for a in world.alerts if a.get("event") == "alarm-raised" and name in str(a.get("summary"))]
    alerted = [a for a in alerted if a["t"] >= since]
    if definition is not None and outage < needs:
        return Check(
            "the endpoint-down alarm fired and alerted",
            True,
            f"not expected: {outage:g} s down, the alarm needs {needs:g} s (fired: {bool(fired)})",
        )
    return Check(
        "the endpoint-down alarm fired and alerted",
        definition is not None and bool(fired) and bool(alerted),
        f"{name} in ALARM at t={fired[0]:.0f}s ({outage:g} s down, the alarm needs {needs:g} s); alert: "
        f"{alerted[0]['summary']}"
        if fired and alerted
        else f"{name}: ALARM at {fired or 'never'}, {len(alerted)} alerts ({outage:g} s down)",
    )


def _no_failed_handler(world: DrillWorld) -> Check:
    failed = [f"{i.function}: {i.error}" for i in world.invocations if i.error]
    late = [
        f"{i.function} ran {i.ended - i.started:.0f} s"
        for i in world.invocations
        if i.ended - i.started > world.stack.function_timeout.get(i.function, 900)
    ]
    problems = failed + [f"{x} (past its Lambda timeout)" for x in late]
    return Check(
        "every handler invocation succeeded within its timeout",
        not problems,
        f"{len(world.invocations)} invocations" + (f"; {'; '.join(problems[:3])}" if problems else ""),
    )


def _group_of_one(world: DrillWorld) -> Check:
    members = world.group.members()
    return Check(
        "the group is back to one instance",
        len(members) == 1 and world.group.desired() == 1,
        f"desired capacity {world.group.desired()}, instances {', '.join(f'{i} {s}' for i, s in members) or 'none'}",
    )


def _result(
    world: DrillWorld, key: str, title: str, story: str, facts: dict[str, Any], checks: list[Check]
) -> ScenarioResult:
    assert world.load is not None
    end = world.t()
    clients = client_stats(world.via, world.load.outcomes, 0.0, end)
    holder = world.eip_holder()
    endpoint = world.endpoint()
    serving = endpoint.get("serving_instance_id")
    members = dict(world.group.members())
    if holder is None:
        was = world.eip_lost_from
        note = "nothing" + (f" (was on {was}, terminated)" if was else "")
    else:
        role = "serving" if holder == serving else ("in the group" if holder in members else "not in the group")
        state = world.fleet.servers.get(holder)
        note = f"{holder} ({role}{', TGI down' if state is None or state.state != 'ready' else ''})"
    purchase = {i: world.group.purchase.get(i, "?") for i in members}
    facts = {**facts, "serving_changes": _changes(world), "mode_changes": _mode_changes(world)}
    if world.chaos is not None:
        facts["chaos_seed"] = world.chaos.seed
        facts["deliveries"] = world.deliveries
    if key == "baseline":
        mode = "spot (no spotkeeper)"
    else:
        mode = endpoint.get("mode", "spot")
        if serving in purchase:
            mode += f" ({serving} is {purchase[serving]})"
    return ScenarioResult(
        key=key,
        title=title,
        story=story,
        clients=clients,
        eip_on=holder,
        eip_note=note,
        serving_instance=serving,
        capacity_mode=mode,
        purchase_options=purchase,
        alerts=list(world.alerts),
        alarms=world.alarm_transitions(),
        timeline=list(world.timeline),
        facts=facts,
        checks=checks,
        samples=list(world.load.outcomes),
        duration=end,
    )


def _changes(world: DrillWorld) -> list[list[Any]]:
    """[t, serving instance, its purchase option, its TGI ready] each time one of them changed."""
    changes: list[list[Any]] = []
    for t, serving, ready in world.serving_log:
        row = [t, serving, world.group.purchase.get(serving or "", None), ready]
        if not changes or changes[-1][1:] != row[1:]:
            changes.append(row)
    return changes


def _mode_changes(world: DrillWorld) -> list[list[Any]]:
    changes: list[list[Any]] = []
    for t, mode in world.mode_log:
        if not changes or changes[-1][1] != mode:
            changes.append([t, mode])
    return changes


# -- 1: interruption ---------------------------------------------------------------------------------------
def interruption(world: DrillWorld, options: Any) -> ScenarioResult:
    doomed = _warm_up(world)
    world.start_load(world.start_gateway(), options.request_interval, "gateway", clients=_clients(options))
    world.at(WARNING_AT, "warning", lambda: world.spot_warning(doomed))
    world.at(WARNING_AT + SPOT_NOTICE, "reclaim", lambda: world.spot_reclaim(doomed))
    chaos_room = MAX_DELAY + PROBE_PERIOD + MAX_DELAY if world.chaos is not None else 0.0
    world.run_for(WARNING_AT + max(options.load_seconds, SPOT_NOTICE) + SETTLE + chaos_room)

    replacement = _launched_after(world, WARNING_AT)
    took = _launch_to_ready(world, replacement)
    allowance, why = _chaos_allowance(world, doomed, replacement)
    bound = max(0.0, (took if took is not None else float("inf")) - SPOT_NOTICE) + FAILOVER_SLACK + allowance
    assert world.load is not None
    clients = client_stats("gateway", world.load.outcomes, 0.0, world.t())
    holder, serving = world.eip_holder(), world.endpoint().get("serving_instance_id")
    facts = {
        "interrupted": doomed,
        "replacement": replacement,
        "warning_at": WARNING_AT,
        "reclaimed_at": WARNING_AT + SPOT_NOTICE,
        "replacement_launch_to_ready_seconds": took,
        "downtime_bound_seconds": bound,
        "chaos_allowance_seconds": allowance,
        "marks": _marks(world, {"warning": WARNING_AT, "reclaim": WARNING_AT + SPOT_NOTICE}, replacement),
    }
    checks = [
        Check(
            "EIP on the replacement, which serves",
            replacement is not None and holder == replacement and serving == replacement,
            f"EIP on {holder}, serving {serving}, replacement {replacement}",
        ),
        Check(
            "downtime <= max(0, launch-to-ready - 120 s) + 10 s" + (" + chaos" if world.chaos is not None else ""),
            clients.longest_outage_seconds <= bound,
            f"{clients.longest_outage_seconds:g} s without a successful request; launch-to-ready "
            f"{took if took is None else round(took)} s, bound {bound:.0f} s{why}",
        ),
        _endpoint_down_alerted(world, WARNING_AT, clients.longest_outage_seconds),
        _no_fallback(world, WARNING_AT),
        _group_of_one(world),
        _no_failed_handler(world),
    ]
    return _result(
        world,
        "interruption",
        "Spot interruption of the serving instance",
        f"Warning for the serving instance at t={WARNING_AT:g}s, Spot reclaims it 120 s later; the replacement "
        f"needs {options.load_seconds:g} s to load the model.",
        facts,
        checks,
    )


def _marks(world: DrillWorld, marks: dict[str, float], replacement: str | None) -> dict[str, float]:
    if replacement is not None and replacement in world.ready_at:
        marks = {**marks, "replacement ready": round(world.t(world.ready_at[replacement]), 1)}
    return marks


# -- 2: rebalance ahead of the warning ----------------------------------------------------------------------
def rebalance(world: DrillWorld, options: Any) -> ScenarioResult:
    at_risk = _warm_up(world)
    world.start_load(world.start_gateway(), options.request_interval, "gateway", clients=_clients(options))
    # A rebalance recommendation can come well before the warning: here long enough that Spot reclaims
    # REBALANCE_MARGIN after the replacement is modelled ready (the warning a minute after it is ready).
    lead = max(30.0, options.load_seconds + REBALANCE_MARGIN - SPOT_NOTICE)

    def recommend() -> None:
        world.note(f"EC2: rebalance recommendation for {at_risk}", "elevated risk of interruption")
        world.group.rebalance_recommendation(at_risk)
        world.put_event(rebalance_recommendation(at_risk, at=world.clock.now()))

    world.at(WARNING_AT, "rebalance", recommend)
    world.at(WARNING_AT + lead, "warning", lambda: world.spot_warning(at_risk))
    world.at(WARNING_AT + lead + SPOT_NOTICE, "reclaim", lambda: world.spot_reclaim(at_risk))
    chaos_room = MAX_DELAY if world.chaos is not None else 0.0
    world.run_for(max(WARNING_AT + lead + SPOT_NOTICE, WARNING_AT + options.load_seconds) + SETTLE + chaos_room)

    replacement = _launched_after(world, WARNING_AT)
    assert world.load is not None
    clients = client_stats("gateway", world.load.outcomes, 0.0, world.t())
    holder, serving = world.eip_holder(), world.endpoint().get("serving_instance_id")
    facts = {
        "at_risk": at_risk,
        "replacement": replacement,
        "recommendation_at": WARNING_AT,
        "warning_at": WARNING_AT + lead,
        "reclaimed_at": WARNING_AT + lead + SPOT_NOTICE,
        "replacement_launch_to_ready_seconds": _launch_to_ready(world, replacement),
        "marks": _marks(
            world,
            {"rebalance": WARNING_AT, "warning": WARNING_AT + lead, "reclaim": WARNING_AT + lead + SPOT_NOTICE},
            replacement,
        ),
    }
    checks = [
        Check(
            "zero failed requests",
            clients.failed == 0 and clients.sent > 0,
            f"{clients.failed} of {clients.sent} failed",
        ),
        Check(
            "EIP on the replacement, which serves",
            replacement is not None and holder == replacement and serving == replacement,
            f"EIP on {holder}, serving {serving}, replacement {replacement}",
        ),
        _no_fallback(world, WARNING_AT),
        _group_of_one(world),
        _no_failed_handler(world),
    ]
    return _result(
        world,
        "rebalance",
        "rebalance recommendation ahead of the warning",
        f"Rebalance recommendation at t={WARNING_AT:g}s (the group does Capacity Rebalancing), the interruption "
        f"warning {lead:g} s later, Spot reclaims 120 s after that.",
        facts,
        checks,
    )


# -- 3: Spot capacity outage --------------------------------------------------------------------------------
def capacity_outage(world: DrillWorld, options: Any) -> ScenarioResult:
    first = _warm_up(world)
    world.start_load(world.start_gateway(), options.request_interval, "gateway", clients=_clients(options))

    def outage() -> None:
        world.note("EC2: Spot capacity runs out for the group's types", "placement score 1")
        world.market.capacity = False
        world.market.set_score(1)
        world.spot_warning(first)

    world.at(WARNING_AT, "outage", outage)
    world.at(WARNING_AT + SPOT_NOTICE, "reclaim", lambda: world.spot_reclaim(first))

    def on_demand_serving() -> str | None:
        serving = _serving_ready(world)
        return serving if serving and world.group.purchase.get(serving) == "on-demand" else None

    if not world.run_until(lambda: on_demand_serving() is not None, WARNING_AT + options.load_seconds + 900):
        return _capacity_result(world, options, first, None, None, None)
    fallback_serving = on_demand_serving()
    spot_back_at = world.t() + 60

    def spot_returns() -> None:
        world.note("EC2: Spot capacity is back", "placement score 9")
        world.market.capacity = True
        world.market.set_score(9)

    world.at(spot_back_at, "spot back", spot_returns)

    def back_on_spot() -> bool:
        serving = _serving_ready(world)
        refresh = world.group.refreshes[0] if world.group.refreshes else None
        return (
            serving is not None
            and world.group.purchase.get(serving) == "spot"
            and world.endpoint().get("mode") == "spot"
            and refresh is not None
            and not refresh.active
            and len(world.group.members()) == 1
        )

    world.run_until(back_on_spot, 1800 + 2 * options.load_seconds)
    world.run_for(SETTLE / 3)
    # From the first second the state table names it as serving with its TGI ready.
    fallback_at = next((t for t, serving, ready in world.serving_log if serving == fallback_serving and ready), None)
    return _capacity_result(world, options, first, fallback_serving, fallback_at, spot_back_at)


def _capacity_result(
    world: DrillWorld,
    options: Any,
    first: str,
    fallback_serving: str | None,
    fallback_at: float | None,
    spot_back_at: float | None,
) -> ScenarioResult:
    assert world.load is not None
    serving = world.endpoint().get("serving_instance_id")
    mode = world.endpoint().get("mode", "spot")
    on_demand_during_outage = [
        t
        for t, m in world.mode_log
        if m == "on-demand" and t >= WARNING_AT and (spot_back_at is None or t < spot_back_at)
    ]
    after = [(t, s, ready) for t, s, ready in world.serving_log if fallback_at is not None and t >= fallback_at]
    gaps = [t for t, s, ready in after if not (s and ready)]
    failures_after = [o for o in world.load.outcomes if fallback_at is not None and o.at >= fallback_at and not o.ok]
    refresh = world.group.refreshes[0] if world.group.refreshes else None
    facts = {
        "first": first,
        "fallback_instance": fallback_serving,
        "fallback_serving_at": fallback_at,
        "spot_back_at": spot_back_at,
        "refresh": refresh.describe(world.stack.group) if refresh else None,
        "seconds_without_serving_after_fallback": len(gaps),
        "failed_requests_after_fallback": len(failures_after),
        "marks": {
            k: v
            for k, v in {
                "outage + warning": WARNING_AT,
                "reclaim": WARNING_AT + SPOT_NOTICE,
                "on-demand serves": fallback_at,
                "Spot back": spot_back_at,
            }.items()
            if v is not None
        },
    }
    checks = [
        Check(
            "on On-Demand during the outage",
            bool(on_demand_during_outage) and fallback_serving is not None,
            f"mode on-demand from t={on_demand_during_outage[0]:g}s, {fallback_serving} (on-demand) serving "
            f"from t={fallback_at:g}s"
            if on_demand_during_outage and fallback_at is not None
            else "never served from On-Demand",
        ),
        Check(
            "back on Spot after Spot returned",
            fallback_serving is not None
            and mode == "spot"
            and serving is not None
            and serving != fallback_serving
            and world.group.purchase.get(serving) == "spot"
            and world.eip_holder() == serving,
            f"mode {mode}, serving {serving} ({world.group.purchase.get(serving or '', '?')}), EIP on "
            f"{world.eip_holder()}",
        ),
        Check(
            "never without a serving instance after the fallback",
            fallback_at is not None and not gaps and not failures_after,
            f"{len(gaps)} s without a ready serving instance, {len(failures_after)} failed requests after "
            f"t={fallback_at if fallback_at is None else round(fallback_at)}s",
        ),
        _group_of_one(world),
        _no_failed_handler(world),
    ]
    return _result(
        world,
        "capacity",
        "Spot capacity outage: fallback to On-Demand and back",
        f"At t={WARNING_AT:g}s Spot capacity runs out and the serving instance is interrupted; Spot launches fail "
        "until it returns, 60 s after the On-Demand instance serves. Fall-forward after "
        "MinOnDemandSeconds, on the five-minute schedule.",
        facts,
        checks,
    )


# -- 4: the baseline -------------------------------------------------------------------------------------------
def baseline(world: DrillWorld, options: Any) -> ScenarioResult:
    # As ops run it by hand: the group launched its instance, TGI loads, someone associates the EIP.
    first = world.group.members()[0][0]
    if not world.run_until(
        lambda: world.fleet.servers.get(first) is not None and world.fleet.servers[first].state == "ready",
        options.load_seconds + 60,
    ):
        raise ScenarioError("the first instance's TGI never became ready")
    world.clients.ec2.associate_address(AllocationId=world.stack.eip_allocation_id, InstanceId=first)
    world.note(f"ops: Elastic IP associated with {first} by hand")
    world.start_load(
        world.start_eip_router(), options.request_interval, "elastic ip", keep_alive=False, clients=_clients(options)
    )
    world.at(WARNING_AT, "warning", lambda: world.spot_warning(first))
    world.at(WARNING_AT + SPOT_NOTICE, "reclaim", lambda: world.spot_reclaim(first))
    # Long enough to see the group's replacement ready, and the EIP still not on it.
    world.run_for(WARNING_AT + SPOT_NOTICE + options.load_seconds + SETTLE / 3)

    replacement = _launched_after(world, WARNING_AT)
    assert world.load is not None
    clients = client_stats("elastic ip", world.load.outcomes, 0.0, world.t())
    holder = world.eip_holder()
    facts = {
        "interrupted": first,
        "replacement": replacement,
        "replacement_launch_to_ready_seconds": _launch_to_ready(world, replacement),
        "downtime_seconds": clients.longest_outage_seconds,
        "marks": _marks(world, {"warning": WARNING_AT, "reclaim": WARNING_AT + SPOT_NOTICE}, replacement),
    }
    checks = [
        Check(
            "baseline: the group replaced the instance, but nothing moved the EIP",
            replacement is not None and holder != replacement,
            f"replacement {replacement} ready={replacement in world.ready_at}, EIP on {holder or 'nothing'}",
        ),
        Check(
            "baseline: clients of the EIP are down from the reclaim to the end",
            not clients.recovered and clients.failed > 0,
            f"{clients.longest_outage_seconds:g} s without a successful request (of {world.t():.0f} s played)",
        ),
    ]
    return _result(
        world,
        "baseline",
        "the same interruption with spotkeeper off",
        "The plain group and its Elastic IP as ops run them by hand (no rules, no lifecycle hooks, no Capacity "
        "Rebalancing); clients use the Elastic IP.",
        facts,
        checks,
    )
