"""What the capacity function has already told people (each alert of a switch or a transition goes out once), the
Spot pools whose launches just failed, and the returns to Spot under way.

Items share the state table: pk=group#<name>, sk=once#<what>, sk=failed-pool#<zone>#<type or *> and
sk=return#<mode since>. A claim is
a conditional write; a claimed action that failed (SNS down) is released so the retry can do it, and a claimant
that died holding it loses it when its lease runs out. Claims expire (the table's TTL attribute) two days after
the claim, longer than EventBridge and Lambda keep retrying an event; a failed pool when it runs out.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from spotkeeper.aws import error_code
from spotkeeper.market import FailedPool
from spotkeeper.observability import logger
from spotkeeper.state import conditional_write, query_prefix

LEASE_SECONDS = 60
FAILED_POOL_PREFIX = "failed-pool#"
RETURN_PREFIX = "return#"
ANY_TYPE = "*"
KEEP_SECONDS = 2 * 24 * 3600


class CapacityJournal:
    def __init__(self, table: Any, group: str, now: Callable[[], float]) -> None:
        self._table = table
        self._group = group
        self._now = now

    def _key(self, what: str) -> dict[str, str]:
        return {"pk": f"group#{self._group}", "sk": f"once#{what}"}

    def once(self, what: str, action: Callable[[], None]) -> bool:
        """Run ``action`` unless it already ran (or is running) for ``what``. True when this call ran it."""
        now = self._now()
        claimed = conditional_write(
            self._table.update_item,
            Key=self._key(what),
            UpdateExpression="SET claimed_until = :lease, expiration = :expires",
            ConditionExpression="attribute_not_exists(sk) OR (attribute_not_exists(done) AND "
            "(attribute_not_exists(claimed_until) OR claimed_until < :now))",
            ExpressionAttributeValues={
                ":lease": Decimal(str(now + LEASE_SECONDS)),
                ":expires": int(now + KEEP_SECONDS),
                ":now": Decimal(str(now)),
            },
        )
        if not claimed:
            logger.info("already done", extra={"what": what})
            return False
        try:
            action()
        except Exception:
            self._release(what)
            raise
        self._table.update_item(
            Key=self._key(what),
            UpdateExpression="SET done = :true REMOVE claimed_until",
            ExpressionAttributeValues={":true": True},
        )
        return True

    def _release(self, what: str) -> None:
        try:
            self._table.update_item(Key=self._key(what), UpdateExpression="REMOVE claimed_until")
        except ClientError as error:
            # The lease runs out by itself; the retry just waits for it.
            logger.warning("could not release a claim", extra={"what": what, "code": error_code(error)})

    # failed Spot pools ----------------------------------------------------------------------------
    def record_failed_pool(self, pool: FailedPool) -> bool:
        """Remember a pool that just failed until ``pool.until``; a later failure of it extends that, an earlier
        one (a late or replayed event) changes nothing. The table's TTL deletes the item after it ran out."""
        kind = pool.instance_type or ANY_TYPE
        return conditional_write(
            self._table.update_item,
            Key={"pk": f"group#{self._group}", "sk": f"{FAILED_POOL_PREFIX}{pool.zone}#{kind}"},
            UpdateExpression="SET zone_name = :zone, instance_type = :kind, failed_until = :until, "
            "expiration = :expires",
            ConditionExpression="attribute_not_exists(failed_until) OR failed_until < :until",
            ExpressionAttributeValues={
                ":zone": pool.zone,
                ":kind": kind,
                ":until": Decimal(str(pool.until)),
                ":expires": int(pool.until) + 1,
            },
        )

    def failed_pools(self) -> list[FailedPool]:
        """Every pool recorded as failed, expired or not (TTL deletion lags by up to two days: callers compare
        ``until`` with the time)."""
        items = query_prefix(self._table, f"group#{self._group}", FAILED_POOL_PREFIX)
        return [
            FailedPool(
                zone=item["zone_name"],
                instance_type=None if item["instance_type"] == ANY_TYPE else item["instance_type"],
                until=float(item["failed_until"]),
            )
            for item in items
        ]

    # returns to Spot ------------------------------------------------------------------------------
    def _return_key(self, since: float | None) -> dict[str, str]:
        return {"pk": f"group#{self._group}", "sk": f"{RETURN_PREFIX}{since}"}

    def begin_return(self, since: float | None, keep: int, reason: str) -> tuple[int, str]:
        """Record, before the group's base is lowered, that the On-Demand mode switched at ``since`` returns to Spot
        keeping ``keep`` replicas on On-Demand. One conditional write: of racing or retried fall-forwards from that
        mode the first decides; every one gets (keep, reason) as the first recorded it."""
        first = conditional_write(
            self._table.put_item,
            Item={
                **self._return_key(since),
                "keep": keep,
                "reason": reason,
                "expiration": int(self._now() + KEEP_SECONDS),
            },
            ConditionExpression="attribute_not_exists(sk)",
        )
        if first:
            return keep, reason
        recorded = self.pending_return(since)
        assert recorded is not None  # written by the one that came first; items are only deleted by TTL
        return recorded

    def pending_return(self, since: float | None) -> tuple[int, str] | None:
        """(keep, reason) of the return to Spot begun from the mode switched at ``since``, if one was begun."""
        item = self._table.get_item(Key=self._return_key(since), ConsistentRead=True).get("Item")
        if not item:
            return None
        return int(item["keep"]), str(item["reason"])
