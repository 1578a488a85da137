"""The drill's four scenarios: what is played, when, and what each must show.

Times are simulated seconds after the clients start (t = 0), once the first instance serves. The replacement's
model load time is the drill's ``--load-seconds``; Spot's warning comes two minutes before it reclaims.
"""

from __future__ import annotations

from typing import Any

from spotkeeper_local.aws_events import rebalance_recommendation, spot_interruption
from spotkeeper_local.drill_world import DrillWorld
from spotkeeper_local.embedded_aws import EmbeddedAws, LocalTemplate
from spotkeeper_local.report import Check, DrillError, ScenarioResult, client_stats

WARNING_AT = 30.0
SPOT_NOTICE = 120.0
# How much longer than the replacement's own load time a failover may leave clients without an answer: one
# readiness poll (READY_POLL_SECONDS, 5 s) and a request interval, rounded up.
FAILOVER_SLACK = 10.0
SETTLE = 90.0  # what is left to see after the last scripted event


class ScenarioError(DrillError):
    """The scenario could not get to the point it is about (e.g. the first instance never served)."""


def play(
    name: str,
    aws: EmbeddedAws,
    template: LocalTemplate,
    parameters: dict[str, str],
    options: Any,
    first_load_seconds: float = 60.0,
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


def _warn(world: DrillWorld, instance_id: str) -> None:
    world.note(f"EC2: Spot interruption warning for {instance_id}", "reclaim in 120 s")
    world.put_event(spot_interruption(instance_id, at=world.clock.now()))


def _reclaim(world: DrillWorld, instance_id: str) -> None:
    world.note(f"EC2: Spot reclaims {instance_id}")
    world.group.reclaim(instance_id)


def _launched_after(world: DrillWorld, t: float) -> str | None:
    after = [(at, i) for i, at in world.launched_at.items() if world.t(at) >= t]
    return min(after)[1] if after else None


def _launch_to_ready(world: DrillWorld, instance_id: str | None) -> float | None:
    if instance_id is None or instance_id not in world.ready_at:
        return None
    return world.ready_at[instance_id] - world.launched_at[instance_id]


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
        alarms=[
            {"t": round(world.t(c.at), 1), "alarm": c.alarm, "from": c.previous, "to": c.state}
            for c in (world.alarms.evaluator.transitions if world.alarms is not None else [])
        ],
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
    world.at(WARNING_AT, "warning", lambda: _warn(world, doomed))
    world.at(WARNING_AT + SPOT_NOTICE, "reclaim", lambda: _reclaim(world, doomed))
    world.run_for(WARNING_AT + max(options.load_seconds, SPOT_NOTICE) + SETTLE)

    replacement = _launched_after(world, WARNING_AT)
    took = _launch_to_ready(world, replacement)
    bound = max(0.0, (took if took is not None else float("inf")) - SPOT_NOTICE) + FAILOVER_SLACK
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
        "marks": _marks(world, {"warning": WARNING_AT, "reclaim": WARNING_AT + SPOT_NOTICE}, replacement),
    }
    checks = [
        Check(
            "EIP on the replacement, which serves",
            replacement is not None and holder == replacement and serving == replacement,
            f"EIP on {holder}, serving {serving}, replacement {replacement}",
        ),
        Check(
            "downtime <= max(0, launch-to-ready - 120 s) + 10 s",
            clients.longest_outage_seconds <= bound,
            f"{clients.longest_outage_seconds:g} s without a successful request; launch-to-ready "
            f"{took if took is None else round(took)} s, bound {bound:g} s",
        ),
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
    # The warning comes while the replacement still loads; Spot reclaims after it is ready.
    lead = max(30.0, options.load_seconds - 60.0)

    def recommend() -> None:
        world.note(f"EC2: rebalance recommendation for {at_risk}", "elevated risk of interruption")
        world.group.rebalance_recommendation(at_risk)
        world.put_event(rebalance_recommendation(at_risk, at=world.clock.now()))

    world.at(WARNING_AT, "rebalance", recommend)
    world.at(WARNING_AT + lead, "warning", lambda: _warn(world, at_risk))
    world.at(WARNING_AT + lead + SPOT_NOTICE, "reclaim", lambda: _reclaim(world, at_risk))
    world.run_for(max(WARNING_AT + lead + SPOT_NOTICE, WARNING_AT + options.load_seconds) + SETTLE)

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
        _warn(world, first)

    world.at(WARNING_AT, "outage", outage)
    world.at(WARNING_AT + SPOT_NOTICE, "reclaim", lambda: _reclaim(world, first))

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
    world.at(WARNING_AT, "warning", lambda: _warn(world, first))
    world.at(WARNING_AT + SPOT_NOTICE, "reclaim", lambda: _reclaim(world, first))
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
