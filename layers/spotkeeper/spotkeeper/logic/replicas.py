"""The ready set: which replicas the gateway may route to, and which one holds the Elastic IP (the primary).

A replica joins when its TGI is ready (launch hook), is warned the moment a Spot interruption warning or a
rebalance recommendation names it (it takes no new requests; if it is the primary the EIP moves at once to
another ready replica), and leaves when it terminates or turns unhealthy. The scheduled probe repairs what
lost or failed events left behind. With one replica this changes nothing: the primary keeps serving, warned
or not, until its replacement is ready, as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spotkeeper.alerts import Alert
from spotkeeper.logic.lifecycle import make_serving
from spotkeeper.observability import logger
from spotkeeper.records import GONE, READY, WARNED

if TYPE_CHECKING:
    from spotkeeper.deps import ControlDeps
    from spotkeeper.group import Group
    from spotkeeper.records import Replica


def join_ready_set(instance_id: str, deps: ControlDeps) -> bool:
    """The replica's TGI is ready: the gateway may route to it. False if it vanished, or was warned or left
    before (a late event never brings it back)."""
    facts = deps.fleet.replica_facts(instance_id)
    if facts is None:
        return False
    joined = deps.state.join_ready_set(deps.group, facts, deps.clock.now())
    if joined:
        logger.info("replica joined the ready set", extra={"instance_id": instance_id, "zone": facts.availability_zone})
    return joined


def warn_replica(instance_id: str, deps: ControlDeps, *, create: bool = False) -> bool:
    """No new requests for this replica. Without ``create`` only a replica of the set is touched (one
    conditional write, nothing to look up first); with it, a replica still loading is kept from joining."""
    return deps.state.mark_warned(deps.group, instance_id, deps.clock.now(), create=create)


def leave_ready_set(instance_id: str, deps: ControlDeps, reason: str) -> bool:
    return deps.state.leave_ready_set(deps.group, instance_id, deps.clock.now(), reason)


def hand_over_primary(
    leaving: str, deps: ControlDeps, group: Group | None = None, *, probe_tgi: bool = True
) -> str | None:
    """``leaving`` (warned, or out of the set) holds the Elastic IP: move it now to a ready, un-warned
    replica, preferring another zone. None when it is not the primary or there is none (one replica: it keeps
    the EIP until its replacement is ready).

    ``probe_tgi`` asks the candidate's TGI first; the interruption function runs outside the VPC (it cannot
    reach TGI) and trusts the ready set, which the probe keeps honest every minute."""
    endpoint = deps.state.get_endpoint(deps.group)
    if endpoint.serving_instance_id != leaving:
        return None
    replicas = deps.state.replicas(deps.group)
    candidates = [r for r in replicas if r.state == READY and r.address and r.instance_id != leaving]
    if not candidates:
        return None
    group = group or deps.fleet.describe_group()
    leaving_zone = next((r.availability_zone for r in replicas if r.instance_id == leaving), None)
    candidates.sort(key=lambda r: (r.availability_zone == leaving_zone, r.since, r.instance_id))
    for replica in candidates:
        member = group.instance(replica.instance_id)
        if member is None or member.lifecycle_state != "InService" or not _still_fit(replica, deps):
            continue
        assert replica.address is not None
        if probe_tgi and not deps.tgi.readiness(replica.address, deps.env.model_id).ready:
            continue
        outcome = make_serving(replica.instance_id, replica.address, deps)
        if outcome == "moved":
            deps.alerts.send(
                Alert(
                    "eip-moved",
                    "info",
                    f"{replica.instance_id} is the primary: Elastic IP moved off {leaving}, which is leaving",
                    {"instance_id": replica.instance_id, "address": replica.address, "from": leaving},
                )
            )
        if outcome:
            return replica.instance_id
    return None


def _still_fit(replica: Replica, deps: ControlDeps) -> bool:
    record = deps.state.get_instance(deps.group, replica.instance_id)
    return not (record.doomed or record.at_risk_since or record.draining_since or record.marked_unhealthy)


def reconcile_ready_set(deps: ControlDeps, primary: str | None) -> dict[str, str]:
    """Make the ready set agree with the group and the probes (a lost event, a replica that stopped
    answering). Returns what changed, per instance, for the probe's report."""
    group = deps.fleet.describe_group()
    records = {record.instance_id: record for record in deps.state.instances(deps.group)}
    replicas = {replica.instance_id: replica for replica in deps.state.replicas(deps.group)}
    changes: dict[str, str] = {}
    for member in group.instances:
        if member.lifecycle_state != "InService" or member.instance_id in replicas:
            continue
        record = records.get(member.instance_id)
        if record is not None and (
            record.doomed or record.at_risk_since or record.draining_since or record.marked_unhealthy
        ):
            continue
        facts = deps.fleet.replica_facts(member.instance_id)
        if facts is None or not deps.tgi.readiness(facts.address, deps.env.model_id).ready:
            continue
        if deps.state.join_ready_set(deps.group, facts, deps.clock.now()):
            changes[member.instance_id] = READY  # ready, but its launch reaction never recorded it
    # Then what left: a primary that leaves hands the EIP to a ready replica, the ones just joined included.
    for replica in replicas.values():
        if replica.state == GONE:
            continue
        record = records.get(replica.instance_id)
        leaving = record is not None and (record.doomed or record.at_risk_since)
        member = group.instance(replica.instance_id)
        if member is None and (not leaving or deps.fleet.replica_facts(replica.instance_id) is None):
            # Detached while doomed it may still serve, warned, until it is gone from EC2.
            reason = "no longer in the group"
        elif record is not None and record.draining_since:
            reason = "draining"
        elif record is not None and record.marked_unhealthy:
            reason = "marked unhealthy"
        elif replica.instance_id != primary and replica.state == READY and _failed_probes(replica, deps):
            reason = f"failed {deps.env.unhealthy_after_failures} probes in a row"
            if deps.state.mark_unhealthy(deps.group, replica.instance_id):
                deps.fleet.mark_unhealthy(replica.instance_id)
                deps.alerts.send(
                    Alert(
                        "instance-unhealthy",
                        "critical",
                        f"{replica.instance_id} (not the primary) {reason}: marked Unhealthy for replacement",
                        {"instance_id": replica.instance_id, "reason": reason},
                    )
                )
        else:
            if leaving and replica.state == READY and warn_replica(replica.instance_id, deps):
                changes[replica.instance_id] = WARNED  # its warning's reaction failed before marking it
            if (leaving or replica.state == WARNED) and replica.instance_id == primary:
                hand_over_primary(replica.instance_id, deps, group)  # a hand-over that failed, or had nobody
            continue
        if leave_ready_set(replica.instance_id, deps, reason):
            changes[replica.instance_id] = f"{GONE}: {reason}"
            hand_over_primary(replica.instance_id, deps, group)

    if changes:
        logger.info("ready set reconciled", extra={"changes": changes})
    return changes


def _failed_probes(replica: Replica, deps: ControlDeps) -> bool:
    """Probe a replica that is not the primary (the probe counts the primary's failures itself)."""
    assert replica.address is not None
    ready = deps.tgi.readiness(replica.address, deps.env.model_id).ready
    return deps.state.record_probe(deps.group, replica.instance_id, ready) >= deps.env.unhealthy_after_failures
