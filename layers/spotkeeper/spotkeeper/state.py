"""Endpoint state in DynamoDB: which instance serves, what is leaving, capacity mode, pending launches.

One table (pk/sk) holds, per group:
  pk=group#<name> sk=endpoint           the serving instance, capacity mode, a version for optimistic locking
  pk=group#<name> sk=launch#<instance>  a launch lifecycle hook waiting for TGI to become ready
  pk=group#<name> sk=instance#<id>      per-instance facts: doomed (interruption), draining, probe failures
  pk=group#<name> sk=alert#<ms>#<event> the alerts sent, kept two weeks (TTL), for `spotkeeper status`
  pk=group#<name> sk=replica#<id>       the ready set: one record per replica, ready -> warned -> gone
Powertools idempotency records share the table under their own pk.

Every change is a conditional write, so concurrent or replayed events cannot undo each other.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from spotkeeper.observability import logger
from spotkeeper.records import (
    GONE,
    ON_DEMAND,
    READY,
    REPLICA_RANK,
    SPOT,
    WARNED,
    Endpoint,
    InstanceRecord,
    PendingLaunch,
    Replica,
    ReplicaFacts,
)

ENDPOINT_SK = "endpoint"
ALERT_RETENTION_SECONDS = 14 * 24 * 3600
REPLICA_PREFIX = "replica#"
# A gone replica's tombstone outlives any redelivery of an old event about it (EventBridge retries for 24 h).
TOMBSTONE_SECONDS = 2 * 86400


def _pk(group: str) -> str:
    return f"group#{group}"


def conditional_write(write: Callable[..., Any], **request: Any) -> bool:
    """Make one conditional DynamoDB write. False when its condition did not hold: someone else wrote first."""
    try:
        write(**request)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            return False
        raise
    return True


def query_prefix(table: Any, pk: str, prefix: str, consistent: bool = True) -> list[dict[str, Any]]:
    """Every item of partition ``pk`` whose sort key starts with ``prefix``, across all result pages."""
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
        "ExpressionAttributeValues": {":pk": pk, ":prefix": prefix},
        "ConsistentRead": consistent,
    }
    while True:
        response = table.query(**kwargs)
        items.extend(response.get("Items", []))
        if "LastEvaluatedKey" not in response:
            return items
        kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]


class StateStore:
    """DynamoDB access for endpoint state. Takes a boto3 DynamoDB Table resource."""

    def __init__(self, table: Any) -> None:
        self._table = table

    # endpoint ---------------------------------------------------------------------------------
    def get_endpoint(self, group: str, consistent: bool = True) -> Endpoint:
        item = self._table.get_item(Key={"pk": _pk(group), "sk": ENDPOINT_SK}, ConsistentRead=consistent).get("Item")
        return Endpoint.from_item(group, item)

    def set_serving(self, group: str, instance_id: str, address: str, at: float, expected_version: int) -> bool:
        """Record the serving instance if nobody changed the endpoint since ``expected_version``."""
        return conditional_write(
            self._table.update_item,
            Key={"pk": _pk(group), "sk": ENDPOINT_SK},
            UpdateExpression="SET serving_instance_id = :i, serving_address = :a, serving_since = :t, "
            "first_served_at = if_not_exists(first_served_at, :t), version = :next",
            ConditionExpression="attribute_not_exists(version) OR version = :v",
            ExpressionAttributeValues={
                ":i": instance_id,
                ":a": address,
                ":t": Decimal(str(at)),
                ":v": expected_version,
                ":next": expected_version + 1,
            },
        )

    def clear_serving(self, group: str, instance_id: str, expected_version: int) -> bool:
        """Forget the serving instance, only if it is still ``instance_id``."""
        return conditional_write(
            self._table.update_item,
            Key={"pk": _pk(group), "sk": ENDPOINT_SK},
            UpdateExpression="REMOVE serving_instance_id, serving_address, serving_since SET version = :next",
            ConditionExpression="serving_instance_id = :i AND version = :v",
            ExpressionAttributeValues={":i": instance_id, ":v": expected_version, ":next": expected_version + 1},
        )

    def set_mode(
        self,
        group: str,
        mode: str,
        reason: str,
        at: float,
        expected_mode: str,
        on_demand_replicas: int | None = None,
        expected_replicas: int | None = None,
    ) -> bool:
        """Switch capacity mode, or change how many replicas the fallback runs on On-Demand, once: of racing
        callers only the first, the one that read the count still recorded, wins.

        Without counts (one replica) the mode says them: on-demand is 1, spot is 0. An item recorded before there
        was a count has none: its mode says it.
        """
        count = on_demand_replicas if on_demand_replicas is not None else (1 if mode == ON_DEMAND else 0)
        expected = expected_replicas if expected_replicas is not None else (1 if expected_mode == ON_DEMAND else 0)
        if (count > 0) != (mode == ON_DEMAND):
            raise ValueError(f"mode {mode} with {count} On-Demand replicas")
        condition = "#n = :expected"
        if expected == 0:
            condition += " OR (attribute_not_exists(#n) AND (attribute_not_exists(#m) OR #m = :spot))"
        elif expected == 1:
            condition += " OR (attribute_not_exists(#n) AND #m = :od)"
        values: dict[str, Any] = {
            ":mode": mode,
            ":t": Decimal(str(at)),
            ":r": reason,
            ":count": count,
            ":expected": expected,
            ":zero": 0,
            ":one": 1,
        }
        if expected == 0:
            values[":spot"] = SPOT
        elif expected == 1:
            values[":od"] = ON_DEMAND
        return conditional_write(
            self._table.update_item,
            Key={"pk": _pk(group), "sk": ENDPOINT_SK},
            UpdateExpression="SET #m = :mode, #n = :count, mode_since = :t, mode_reason = :r, "
            "version = if_not_exists(version, :zero) + :one",
            ConditionExpression=condition,
            ExpressionAttributeNames={"#m": "mode", "#n": "on_demand_replicas"},
            ExpressionAttributeValues=values,
        )

    def record_endpoint_alarm(self, group: str, state: str, at: float) -> bool:
        """Record the endpoint-down alarm's state unless a newer one is recorded already (a late or replayed
        event changes nothing). Not versioned: it never races the serving instance's optimistic lock."""
        return conditional_write(
            self._table.update_item,
            Key={"pk": _pk(group), "sk": ENDPOINT_SK},
            UpdateExpression="SET alarm_state = :s, alarm_at = :t",
            ConditionExpression="attribute_not_exists(alarm_at) OR alarm_at < :t",
            ExpressionAttributeValues={":s": state, ":t": Decimal(str(at))},
        )

    # instances --------------------------------------------------------------------------------
    def get_instance(self, group: str, instance_id: str) -> InstanceRecord:
        item = self._table.get_item(Key={"pk": _pk(group), "sk": f"instance#{instance_id}"}, ConsistentRead=True).get(
            "Item"
        )
        return InstanceRecord.from_item(instance_id, item)

    def mark_at_risk(self, group: str, instance_id: str, at: float) -> bool:
        return self._set_once(group, instance_id, "at_risk_since", at)

    def begin_replacement(
        self, group: str, instance_id: str, mark: str, at: float, owner: str, how: str, desired_before: int
    ) -> tuple[bool, bool, str, int]:
        """In one write: mark the instance (``doomed_at``, ``at_risk_since`` or ``unhealthy_at``), claim its
        replacement for ``owner`` and record the plan, each only if not there already.

        Returns (first mark, claim is ours, the plan's how, the plan's desired_before). The plan is the first one
        ever recorded, so a retry or a racing event carries out the same plan, with absolute values.
        """
        if mark not in {"doomed_at", "at_risk_since", "unhealthy_at"}:
            raise ValueError(f"unknown mark {mark}")
        old = self._table.update_item(
            Key={"pk": _pk(group), "sk": f"instance#{instance_id}"},
            UpdateExpression="SET #mark = if_not_exists(#mark, :at), replace_by = if_not_exists(replace_by, :owner), "
            "replacement = if_not_exists(replacement, :how), desired_before = if_not_exists(desired_before, :d)",
            ExpressionAttributeNames={"#mark": mark},
            ExpressionAttributeValues={
                ":at": Decimal(str(at)),
                ":owner": owner,
                ":how": how,
                ":d": desired_before,
            },
            ReturnValues="ALL_OLD",
        ).get("Attributes", {})
        first = mark not in old
        claimed = "replace_by" not in old or (old["replace_by"] == owner and not old.get("replace_done"))
        return first, claimed, old.get("replacement", how), int(old.get("desired_before", desired_before))

    def claim_action(self, group: str, instance_id: str, action: str, owner: str) -> bool:
        """Claim a one-time action on an instance (start its replacement, retire it, ...).

        True for the first claimer, and again for the same owner (a retry of the same event) while the
        action is not recorded as done: so a reaction that failed half-way is redone by its retry, and a
        duplicate or racing event never does it a second time.
        """
        return conditional_write(
            self._table.update_item,
            Key={"pk": _pk(group), "sk": f"instance#{instance_id}"},
            UpdateExpression="SET #owner = :owner",
            ConditionExpression="attribute_not_exists(#owner) OR (#owner = :owner AND attribute_not_exists(#done))",
            ExpressionAttributeNames={"#owner": f"{action}_by", "#done": f"{action}_done"},
            ExpressionAttributeValues={":owner": owner},
        )

    def finish_action(self, group: str, instance_id: str, action: str) -> None:
        """Record a claimed action as carried out: no later claim, not even its owner's, does it again."""
        self._table.update_item(
            Key={"pk": _pk(group), "sk": f"instance#{instance_id}"},
            UpdateExpression="SET #done = :true",
            ExpressionAttributeNames={"#done": f"{action}_done"},
            ExpressionAttributeValues={":true": True},
        )

    def instances(self, group: str) -> list[InstanceRecord]:
        """Every instance spotkeeper has a record of in this group."""
        items = query_prefix(self._table, _pk(group), "instance#")
        return [InstanceRecord.from_item(item["sk"].removeprefix("instance#"), item) for item in items]

    def mark_draining(self, group: str, instance_id: str, at: float) -> bool:
        return self._set_once(group, instance_id, "draining_since", at)

    def mark_unhealthy(self, group: str, instance_id: str) -> bool:
        return self._set_once(group, instance_id, "marked_unhealthy", True)

    def record_probe(self, group: str, instance_id: str, healthy: bool, at: float | None = None) -> int:
        """Count consecutive failed probes atomically; a success resets it (and, with ``at``, records when the
        instance last answered, never going back in time). Returns the new count."""
        key = {"pk": _pk(group), "sk": f"instance#{instance_id}"}
        if healthy:
            if at is None:
                self._table.update_item(
                    Key=key, UpdateExpression="SET probe_failures = :zero", ExpressionAttributeValues={":zero": 0}
                )
                return 0
            # A success finishing after a later probe (two overlapping runs) must move neither probe_ok_at back nor
            # the count of a later failure to 0.
            conditional_write(
                self._table.update_item,
                Key=key,
                UpdateExpression="SET probe_failures = :zero, probe_ok_at = :t",
                ConditionExpression="attribute_not_exists(probe_ok_at) OR probe_ok_at <= :t",
                ExpressionAttributeValues={":zero": 0, ":t": Decimal(str(at))},
            )
            return 0
        response = self._table.update_item(
            Key=key,
            UpdateExpression="ADD probe_failures :one",
            ExpressionAttributeValues={":one": 1},
            ReturnValues="UPDATED_NEW",
        )
        return int(response["Attributes"]["probe_failures"])

    def _set_once(self, group: str, instance_id: str, attribute: str, value: Any) -> bool:
        """Set ``attribute`` on the instance's record unless it is there already. True for the first caller."""
        return conditional_write(
            self._table.update_item,
            Key={"pk": _pk(group), "sk": f"instance#{instance_id}"},
            UpdateExpression="SET #a = :v",
            ConditionExpression="attribute_not_exists(#a)",
            ExpressionAttributeNames={"#a": attribute},
            ExpressionAttributeValues={":v": Decimal(str(value)) if isinstance(value, float) else value},
        )

    # alerts -----------------------------------------------------------------------------------
    def record_alert(self, group: str, at: float, event: str, severity: str, subject: str) -> bool:
        """Keep a sent alert for two weeks. Best effort: the alert itself went out, so a failure only logs."""
        try:
            self._table.put_item(
                Item={
                    "pk": _pk(group),
                    "sk": f"alert#{int(at * 1000):015d}#{event}",
                    "at": Decimal(str(at)),
                    "event": event,
                    "severity": severity,
                    "subject": subject,
                    "expiration": int(at) + ALERT_RETENTION_SECONDS,
                }
            )
        except ClientError as error:
            logger.warning("alert not recorded in the state table", extra={"error": str(error)})
            return False
        return True

    def recent_alerts(self, group: str, limit: int = 10) -> list[dict[str, Any]]:
        """The last ``limit`` alerts, newest first."""
        response = self._table.query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={":pk": _pk(group), ":prefix": "alert#"},
            ScanIndexForward=False,
            Limit=limit,
        )
        return [
            {"at": float(i["at"]), "event": i["event"], "severity": i["severity"], "subject": i["subject"]}
            for i in response.get("Items", [])
        ]

    # pending launches -------------------------------------------------------------------------
    def put_pending_launch(self, group: str, launch: PendingLaunch) -> bool:
        """Record a launch hook we are waiting on. False if it was already recorded (a replay)."""
        return conditional_write(
            self._table.put_item,
            Item={
                "pk": _pk(group),
                "sk": f"launch#{launch.instance_id}",
                "instance_id": launch.instance_id,
                "hook_name": launch.hook_name,
                "token": launch.token,
                "started_at": Decimal(str(launch.started_at)),
                "deadline": Decimal(str(launch.deadline)),
                "status": "waiting",
            },
            ConditionExpression="attribute_not_exists(sk)",
        )

    def get_pending_launch(self, group: str, instance_id: str) -> PendingLaunch | None:
        item = self._table.get_item(Key={"pk": _pk(group), "sk": f"launch#{instance_id}"}, ConsistentRead=True).get(
            "Item"
        )
        return PendingLaunch.from_item(item) if item else None

    def waiting_launches(self, group: str) -> list[PendingLaunch]:
        # Completed launches stay recorded, so the partition's launch# items can outgrow one result page (1 MB).
        launches = [PendingLaunch.from_item(item) for item in query_prefix(self._table, _pk(group), "launch#")]
        # Claimed but not completed: a reaction failed half-way; whoever looks next carries it through.
        return [launch for launch in launches if not launch.completed]

    def complete_launch(self, group: str, instance_id: str) -> None:
        self._table.update_item(
            Key={"pk": _pk(group), "sk": f"launch#{instance_id}"},
            UpdateExpression="SET completed = :true",
            ExpressionAttributeValues={":true": True},
        )

    def finish_launch(
        self, group: str, instance_id: str, outcome: str, owner: str, at: float, stale_after: float = 120.0
    ) -> bool:
        """Claim the right to complete a waiting launch hook with ``outcome`` (continued/abandoned).

        True for exactly one of racing claimers. The same owner (the retry of the same event) may claim again
        to redo its idempotent actions after a failure, and anyone may take over a claim for the same outcome
        that is ``stale_after`` seconds old and still not completed (its claimer died half-way). False once the
        launch is completed or the other outcome won.
        """
        return conditional_write(
            self._table.update_item,
            Key={"pk": _pk(group), "sk": f"launch#{instance_id}"},
            UpdateExpression="SET #s = :outcome, claimed_by = :owner, claimed_at = :now",
            ConditionExpression="attribute_not_exists(completed) AND (#s = :waiting OR "
            "(#s = :outcome AND (claimed_by = :owner OR claimed_at < :stale)))",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={
                ":outcome": outcome,
                ":waiting": "waiting",
                ":owner": owner,
                ":now": Decimal(str(at)),
                ":stale": Decimal(str(at - stale_after)),
            },
        )

    # the ready set -----------------------------------------------------------------------------
    def join_ready_set(self, group: str, facts: ReplicaFacts, at: float) -> bool:
        """Record a replica as ready. Only the first time: never over a warned or gone record (a late or
        replayed event cannot bring a replica back)."""
        values: dict[str, Any] = {
            ":id": facts.instance_id,
            ":state": READY,
            ":rank": REPLICA_RANK[READY],
            ":at": Decimal(str(at)),
            ":address": facts.address,
            ":lifecycle": facts.lifecycle,
        }
        optional = ""
        zone_and_type = (("availability_zone", facts.availability_zone), ("instance_type", facts.instance_type))
        for attribute, value in zone_and_type:
            if value:
                optional += f", {attribute} = :{attribute}"
                values[f":{attribute}"] = value
        return conditional_write(
            self._table.update_item,
            Key={"pk": _pk(group), "sk": REPLICA_PREFIX + facts.instance_id},
            UpdateExpression="SET instance_id = :id, #s = :state, #r = :rank, since = :at, ready_at = :at, "
            "address = :address, lifecycle = :lifecycle" + optional,
            ConditionExpression="attribute_not_exists(#r)",
            ExpressionAttributeNames={"#s": "state", "#r": "rank"},
            ExpressionAttributeValues=values,
        )

    def mark_warned(self, group: str, instance_id: str, at: float, *, create: bool = False) -> bool:
        """A warning or rebalance recommendation arrived for the replica: it takes no new requests.

        ``create`` records it even if it never joined (it was still loading), so it never joins later. True
        for the first caller; False for a replica already warned or gone (or unknown, without ``create``).
        """
        return self._advance(group, instance_id, WARNED, at, create=create, extra={"warned_at": at})

    def leave_ready_set(self, group: str, instance_id: str, at: float, reason: str) -> bool:
        """The replica is terminating, unhealthy or gone: out of the set for good (a tombstone stays)."""
        tombstone = {"reason": reason, "expiration": int(at) + TOMBSTONE_SECONDS}
        return self._advance(group, instance_id, GONE, at, create=True, extra=tombstone)

    def _advance(
        self, group: str, instance_id: str, state: str, at: float, *, create: bool, extra: dict[str, Any]
    ) -> bool:
        rank = REPLICA_RANK[state]
        names = {"#s": "state", "#r": "rank"}
        values: dict[str, Any] = {":id": instance_id, ":state": state, ":rank": rank, ":at": Decimal(str(at))}
        update = "SET instance_id = :id, #s = :state, #r = :rank, since = :at"
        for position, (attribute, value) in enumerate(extra.items()):
            names[f"#x{position}"] = attribute
            values[f":x{position}"] = Decimal(str(value)) if isinstance(value, float) else value
            update += f", #x{position} = :x{position}"
        condition = "#r < :rank"
        if create:
            condition = "attribute_not_exists(#r) OR " + condition
        return conditional_write(
            self._table.update_item,
            Key={"pk": _pk(group), "sk": REPLICA_PREFIX + instance_id},
            UpdateExpression=update,
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    def replicas(self, group: str, consistent: bool = True) -> list[Replica]:
        """Every replica record of the group, gone ones (tombstones) included: filter with ``Replica.in_set``."""
        items = query_prefix(self._table, _pk(group), REPLICA_PREFIX, consistent)
        return [Replica.from_item(item["sk"].removeprefix(REPLICA_PREFIX), item) for item in items]

    def ready_set(self, group: str, consistent: bool = True) -> list[Replica]:
        """The replicas the gateway may route to: ready or warned, with an address."""
        return [replica for replica in self.replicas(group, consistent) if replica.in_set]
