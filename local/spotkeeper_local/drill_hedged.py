"""Hedged replicas in the drill (issue 12): the stack with ``Replicas`` = N >= 2, clients through the gateway and
clients of the Elastic IP at the same time, and a Spot interruption with no rebalance lead.

  replica-interruption   warning for a replica that does not hold the EIP, Spot reclaims it 120 s later
  primary-interruption   the same for the replica that holds the EIP (the primary)

Every instance launched during the scenario takes the launch-to-ready model's time for the template's defaults
(``launch_time.launch_to_ready()``, ~450 s: the realistic load, longer than the warning), unless the drill was
given ``--load-seconds``. What each must show (the issue's must-show): zero failed requests through the gateway,
and clients of the EIP without a successful answer for at most ``EIP_GAP_BOUND`` seconds.

These scenarios are written the way ``drill_scenarios`` defines its own (Python functions); they read the ready
set the product keeps in its state table (``replica#<id>`` records) and fail with a clear ``DrillError`` on a
product that keeps none.
"""

from __future__ import annotations

from typing import Any

from spotkeeper_local.drill_world import DrillWorld
from spotkeeper_local.embedded_aws import EmbeddedAws, LocalTemplate
from spotkeeper_local.report import Check, DrillError, ScenarioResult, client_stats

SCENARIOS = ("replica-interruption", "primary-interruption")
DEFAULT_REPLICAS = 2
WARNING_AT = 30.0
SPOT_NOTICE = 120.0
SETTLE = 90.0
# After the warning, the time the reactions get (one tick for the event's delivery) before the warned replica
# must receive no new request: neither from the gateway nor through the EIP.
WARNED_QUIET_AFTER = 2.0
EIP_GAP_BOUND = 10.0  # the must-show: clients of the EIP without a successful answer for at most 10 s


class HedgedScenarioError(DrillError):
    """The hedged scenario could not get to the point it is about (e.g. the replicas never all served)."""


def realistic_load_seconds() -> float:
    from spotkeeper_local.launch_time import launch_to_ready

    return round(launch_to_ready().total, 1)


def play(
    name: str,
    aws: EmbeddedAws,
    template: LocalTemplate,
    parameters: dict[str, str],
    options: Any,
    first_load_seconds: float = 60.0,
) -> ScenarioResult:
    if name not in SCENARIOS:
        raise DrillError(f"unknown hedged scenario {name!r}")
    replicas = getattr(options, "replicas", None) or DEFAULT_REPLICAS
    if replicas < 2:
        raise DrillError(f"{name} is about hedged replicas: it needs --replicas 2 or more, not {replicas}")
    if "Replicas" not in template.body.get("Parameters", {}):
        raise DrillError("template.yaml has no Replicas parameter: hedged replicas are not in this product")
    load_seconds = getattr(options, "hedged_load_seconds", None) or realistic_load_seconds()
    world = DrillWorld.deploy(
        aws,
        template,
        f"drill-{name}",
        {**parameters, "Replicas": str(replicas)},
        load_seconds,
        first_load_seconds=first_load_seconds,
    )
    if getattr(options, "serial_delivery", False):
        world.concurrency = 1
    try:
        return _interrupt(world, name, replicas, load_seconds, options)
    finally:
        world.close()


# -- what the world looks like -------------------------------------------------------------------------------
def ready_replicas(world: DrillWorld) -> list[str]:
    """Replicas the ready set names ready, whose instance runs in the group with its TGI ready."""
    members = dict(world.group.members())
    records = world.ready_set_records()
    return sorted(
        instance_id
        for instance_id, state in records.items()
        if state == "ready"
        and instance_id in members
        and world.fleet.servers.get(instance_id) is not None
        and world.fleet.servers[instance_id].state == "ready"
    )


def _all_serving(world: DrillWorld, replicas: int) -> bool:
    ready = ready_replicas(world)
    return len(ready) >= replicas and world.eip_holder() in ready


def _tgi_up(world: DrillWorld, replicas: int) -> bool:
    members = dict(world.group.members())
    up = [i for i, server in world.fleet.servers.items() if i in members and server.state == "ready"]
    return len(up) >= replicas and world.eip_holder() is not None


def _warm_up(world: DrillWorld, replicas: int) -> None:
    """The group's N instances boot, spotkeeper puts each in the ready set and the EIP on one of them."""
    if not (
        world.run_until(lambda: _tgi_up(world, replicas), world.load_seconds + 900)
        and world.run_until(lambda: _all_serving(world, replicas), 120)
    ):
        records = world.ready_set_records()
        raise HedgedScenarioError(
            f"the {replicas} replicas never all served (ready set {records or 'empty: the product keeps none'}, "
            f"EIP on {world.eip_holder()})"
        )


def replica_lanes(world: DrillWorld) -> dict[str, list[list[Any]]]:
    """Per replica, [t, state] each time its state changed; ``primary``: [t, holder] each time the EIP moved."""
    lanes: dict[str, list[list[Any]]] = {}
    primary: list[list[Any]] = []
    for t, states, holder in world.replica_log:
        for instance_id, state in states.items():
            lane = lanes.setdefault(instance_id, [])
            if not lane or lane[-1][1] != state:
                lane.append([round(t, 1), state])
        if not primary or primary[-1][1] != holder:
            primary.append([round(t, 1), holder])
    return {"replicas": lanes, "primary": primary}  # type: ignore[dict-item]


def _requests_received(world: DrillWorld) -> dict[str, int]:
    return {instance_id: int(server.requests_total) for instance_id, server in world.fleet.servers.items()}


def _eip_story(doomed: str, primary: str, moved: float | None) -> str:
    if doomed != primary:
        return f"the EIP stayed on the primary {primary}" if moved is None else f"the EIP moved at t={moved:g}s"
    return f"the EIP moved off {doomed} at t={moved:g}s" if moved is not None else f"the EIP never left {doomed}"


# -- the scenario -----------------------------------------------------------------------------------------------
def _interrupt(world: DrillWorld, name: str, replicas: int, load_seconds: float, options: Any) -> ScenarioResult:
    _warm_up(world, replicas)
    clients = getattr(options, "clients", 1) or 1
    interval = options.request_interval
    world.start_load(world.start_gateway(), interval, "gateway", clients=clients)
    world.start_eip_clients(interval, clients=clients)
    primary = world.eip_holder()
    assert primary is not None
    if name == "primary-interruption":
        doomed, role = primary, "the primary (holds the EIP)"
    else:
        doomed = next(i for i in ready_replicas(world) if i != primary)
        role = "a replica that does not hold the EIP"
    world.at(WARNING_AT, "warning", lambda: world.spot_warning(doomed, "reclaim in 120 s, no rebalance lead"))
    counted: dict[str, int] = {}
    world.at(WARNING_AT + WARNED_QUIET_AFTER, "count", lambda: counted.update(_requests_received(world)))
    world.at(WARNING_AT + SPOT_NOTICE, "reclaim", lambda: world.spot_reclaim(doomed))
    world.run_for(WARNING_AT + max(load_seconds, SPOT_NOTICE) + SETTLE)

    end = world.t()
    received = _requests_received(world)
    to_warned = received.get(doomed, 0) - counted.get(doomed, 0)
    assert world.load is not None and world.eip_load is not None
    gateway = client_stats("gateway", world.load.outcomes, 0.0, end)
    eip = client_stats("elastic ip", world.eip_load.outcomes, 0.0, end)
    launched = sorted((at, i) for i, at in world.launched_at.items() if world.t(at) >= WARNING_AT)
    replacement = launched[0][1] if launched else None
    took = (
        world.ready_at[replacement] - world.launched_at[replacement]
        if replacement is not None and replacement in world.ready_at
        else None
    )
    lanes = replica_lanes(world)
    moved = next((t for t, holder in lanes["primary"] if t >= WARNING_AT and holder != doomed), None)
    ready_now = ready_replicas(world)
    holder = world.eip_holder()
    failed_handlers = [f"{i.function}: {i.error}" for i in world.invocations if i.error]
    marks = {"warning": WARNING_AT, "reclaim": WARNING_AT + SPOT_NOTICE}
    if replacement is not None and replacement in world.ready_at:
        marks["replacement ready"] = round(world.t(world.ready_at[replacement]), 1)
    facts = {
        "replicas": replicas,
        "clients_per_address": clients,
        "load_seconds": load_seconds,
        "interrupted": doomed,
        "interrupted_role": "primary" if doomed == primary else "replica",
        "primary_at_start": primary,
        "replacement": replacement,
        "replacement_launch_to_ready_seconds": took,
        "eip_moved_at": moved,
        "eip_clients": {
            "sent": eip.sent,
            "succeeded": eip.succeeded,
            "failed": eip.failed,
            "longest_no_success_seconds": eip.longest_outage_seconds,
            "outage_from": eip.outage_from,
            "outage_to": eip.outage_to,
        },
        "eip_requests": [[o.at, o.ok] for o in world.eip_load.outcomes],
        "replica_states": lanes["replicas"],
        "primary_changes": lanes["primary"],
        "ready_at_end": ready_now,
        "requests_received": received,  # generation requests each replica's TGI received, clients of both kinds
        "requests_to_warned_after_warning": to_warned,
        "marks": marks,
    }
    checks = [
        Check(
            "zero failed requests through the gateway",
            gateway.failed == 0 and gateway.sent > 0,
            f"{gateway.failed} of {gateway.sent} failed ({clients} concurrent clients)",
        ),
        Check(
            f"clients of the EIP without a successful answer for at most {EIP_GAP_BOUND:g} s",
            eip.longest_outage_seconds <= EIP_GAP_BOUND and eip.sent > 0,
            f"{eip.longest_outage_seconds:g} s without a success (from t={eip.outage_from}), {eip.failed} of "
            f"{eip.sent} failed; " + _eip_story(doomed, primary, moved),
        ),
        Check(
            "no request reached the warned replica after its warning",
            to_warned == 0 and bool(counted),
            f"{to_warned} received from t={WARNING_AT + WARNED_QUIET_AFTER:g}s; per replica over the scenario: "
            + ", ".join(f"{i} {n}" for i, n in sorted(received.items())),
        ),
        Check(
            f"{replicas} replicas ready again, the EIP on one of them",
            len(ready_now) >= replicas and holder in ready_now and doomed not in ready_now,
            f"ready {', '.join(ready_now) or 'none'}; EIP on {holder}; replacement {replacement} "
            f"(launch-to-ready {took if took is None else round(took)} s)",
        ),
        Check(
            "every handler invocation succeeded",
            not failed_handlers,
            f"{len(world.invocations)} invocations"
            + (f"; {'; '.join(failed_handlers[:3])}" if failed_handlers else ""),
        ),
    ]
    members = dict(world.group.members())
    serving = world.endpoint().get("serving_instance_id")
    state = world.fleet.servers.get(holder or "")
    return ScenarioResult(
        key=name,
        title=f"N = {replicas}: Spot interruption of {role}, no rebalance lead",
        story=f"{replicas} replicas; warning at t={WARNING_AT:g}s for {role}, Spot reclaims it 120 s later; the "
        f"replacement needs {load_seconds:g} s from launch to ready. {clients} client(s) through the gateway and "
        f"{clients} of the Elastic IP, each one request every {interval:g} s.",
        clients=gateway,
        eip_on=holder,
        eip_note=f"{holder} ({'ready' if state is not None and state.state == 'ready' else 'TGI down'})"
        if holder
        else "nothing",
        serving_instance=serving,
        capacity_mode=world.endpoint().get("mode", "spot"),
        purchase_options={i: world.group.purchase.get(i, "?") for i in members},
        alerts=list(world.alerts),
        alarms=world.alarm_transitions(),
        timeline=list(world.timeline),
        facts=facts,
        checks=checks,
        samples=list(world.load.outcomes),
        duration=end,
    )
