"""Hedged replicas in the drill (issue 12): what the world looks like with ``Replicas`` = N >= 2.

The scenarios themselves are files (``scenarios/replica-interruption.yaml``, ``scenarios/primary-interruption.yaml``,
``setup.replicas: 2``) played by the one engine, ``drill_scenarios``; it reads the ready set the product keeps in its
state table (``replica#<id>`` records) through these helpers, and fails with a clear ``DrillError`` on a product
that keeps none.
"""

from __future__ import annotations

from typing import Any

from spotkeeper_local.drill_world import DrillWorld


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


def replica_lanes(world: DrillWorld) -> dict[str, Any]:
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
    return {"replicas": lanes, "primary": primary}


def requests_received(world: DrillWorld) -> dict[str, int]:
    """Generation requests each instance's TGI received so far (clients of the gateway and of the EIP)."""
    return {instance_id: int(server.requests_total) for instance_id, server in world.fleet.servers.items()}


def longest_no_tgi_up(world: DrillWorld, start: float, end: float) -> tuple[float, float | None]:
    """The longest stretch of [start, end] in which no instance of the group had its TGI up (ready, warned, or not
    yet in the ready set): the outage no routing can avoid. (seconds, from when)."""
    longest, since, frm = 0.0, None, None
    for t, states, _ in world.replica_log:
        if t < start or t > end:
            continue
        up = any(state in ("ready", "warned", "up, not in the ready set") for state in states.values())
        if not up and since is None:
            since = t
        elif up and since is not None:
            if t - since > longest:
                longest, frm = t - since, since
            since = None
    if since is not None and end - since > longest:
        longest, frm = end - since, since
    return round(longest, 1), frm
