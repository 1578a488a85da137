"""Event delivery as AWS does it: at least once, in no particular order, sometimes late, lifecycle events best effort.

EventBridge delivers an event to a target at least once: a delivery that fails is retried "for 24 hours and up to
185 times with an exponential back off and jitter"
(https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-rule-retry-policy.html), so an event can arrive
late, twice (a redelivery keeps the event's ``id``) and after events sent later. Auto Scaling's lifecycle action
events "are produced on a best-effort basis"
(https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-event-reference.html), and best effort
means "in some rare cases an event might not be delivered"
(https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-service-event-delivery-level.html).

``DeliveryChaos`` plays that, reproducibly from a seed, on the way from the bus to a function (``drill_world``'s
``_collect`` hands every event it takes off a function's queue to ``arrive``, and ``_deliver`` invokes what
``due`` returns):

* each event reaches its function one to three times, each copy the same event (same ``id``);
* each copy is late: the first usually by a few seconds, now and then by up to two minutes; further copies
  anywhere up to two minutes; so copies of different events overtake each other;
* a lifecycle event (launch or terminate) is now and then lost altogether (``LOSS``), before any copy.
"""

from __future__ import annotations

import copy
import heapq
import random
from dataclasses import dataclass, field
from typing import Any

LIFECYCLE_TYPES = frozenset({"EC2 Instance-launch Lifecycle Action", "EC2 Instance-terminate Lifecycle Action"})
COPIES = (1, 3)
QUICK_DELAY = (0.0, 10.0)  # seconds: how late most first copies are
LATE_DELAY = (10.0, 120.0)  # seconds: how late a late copy is
LATE_SHARE = 0.25  # the share of first copies that come late; every further copy is drawn over 0-120 s
LOSS = 0.25  # the share of lifecycle events lost
MAX_DELAY = LATE_DELAY[1]


@dataclass
class Delivery:
    """What became of one event on its way to one function."""

    at: float  # when it reached the function's queue (simulated clock)
    function: str
    detail_type: str
    event_id: str
    instance_id: str | None
    delays: list[float] = field(default_factory=list)  # each copy's delay, in seconds (empty: lost)
    lost: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "at": round(self.at, 1),
            "function": self.function,
            "detail_type": self.detail_type,
            "event_id": self.event_id,
            "instance_id": self.instance_id,
            "delays": [round(d, 1) for d in self.delays],
            "lost": self.lost,
        }


def _instance_of(event: dict[str, Any]) -> str | None:
    detail = event.get("detail")
    if not isinstance(detail, dict):
        return None
    return detail.get("instance-id") or detail.get("EC2InstanceId")


class DeliveryChaos:
    """``seed`` and ``stream`` (e.g. the scenario's name, so each scenario gets its own chaos) decide everything."""

    def __init__(self, seed: int, stream: str = "") -> None:
        self.seed = seed
        self._random = random.Random(f"{seed}:{stream}")
        self._queue: list[tuple[float, int, str, dict[str, Any]]] = []
        self._seq = 0
        self.deliveries: list[Delivery] = []

    def arrive(self, now: float, function: str, event: dict[str, Any]) -> Delivery:
        """An event reached ``function``'s queue at ``now``: decide its copies and their delays (or its loss)."""
        detail_type = str(event.get("detail-type", ""))
        delivery = Delivery(now, function, detail_type, str(event.get("id", "")), _instance_of(event))
        self.deliveries.append(delivery)
        if detail_type in LIFECYCLE_TYPES and self._random.random() < LOSS:
            delivery.lost = True
            return delivery
        for index in range(self._random.randint(*COPIES)):
            late = index > 0 or self._random.random() < LATE_SHARE
            low, high = (QUICK_DELAY[0], LATE_DELAY[1]) if index > 0 else (LATE_DELAY if late else QUICK_DELAY)
            delay = self._random.uniform(low, high)
            delivery.delays.append(delay)
            self._seq += 1
            heapq.heappush(self._queue, (now + delay, self._seq, function, copy.deepcopy(event)))
        return delivery

    def due(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        """The copies whose time has come, in the order they arrive."""
        ready = []
        while self._queue and self._queue[0][0] <= now:
            _, _, function, event = heapq.heappop(self._queue)
            ready.append((function, event))
        return ready

    def waiting(self) -> int:
        return len(self._queue)

    def first_delay(self, detail_type: str, instance_id: str | None = None) -> float | None:
        """How late the earliest copy of the first matching event was; None if it was lost or never sent."""
        for delivery in self.deliveries:
            if delivery.detail_type == detail_type and (instance_id is None or delivery.instance_id == instance_id):
                return min(delivery.delays) if delivery.delays else None
        return None

    def lost(self, detail_type: str, instance_id: str) -> bool:
        return any(d.lost and d.detail_type == detail_type and d.instance_id == instance_id for d in self.deliveries)
