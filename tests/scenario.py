"""A moto scenario runner for the control plane: events delivered at least once and out of order.

Every event is delivered ``copies`` times; the pending deliveries are shuffled after each one, and the
lifecycle events AWS would emit for what changed in the group join the pool as they happen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from spotkeeper_local.emulated_fleet import EmulatedInstances
from spotkeeper_local.lambda_runtime import invoke
from spotkeeper_local.lifecycle_hooks import GroupWatcher

FUNCTION_FOR = {
    "EC2 Spot Instance Interruption Warning": "interruption",
    "EC2 Instance Rebalance Recommendation": "interruption",
    "EC2 Instance-launch Lifecycle Action": "lifecycle",
    "EC2 Instance-terminate Lifecycle Action": "lifecycle",
    "Scheduled Event": "health",
}


@dataclass
class Delivery:
    event: dict[str, Any]
    function: str
    outcome: Any = None
    at: float = 0.0


@dataclass
class Scenario:
    deps: Any
    watcher: GroupWatcher
    fleet: EmulatedInstances
    ec2: Any
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    copies: int = 3
    pool: list[dict[str, Any]] = field(default_factory=list)
    log: list[Delivery] = field(default_factory=list)

    def emit(self, *events: dict[str, Any]) -> None:
        for event in events:
            self.pool.extend(dict(event) for _ in range(self.copies))
        self.rng.shuffle(self.pool)

    def observe_group(self) -> None:
        """Turn group changes into lifecycle events, and boot/kill the instances' TGI accordingly."""
        for event in self.watcher.poll():
            instance_id = event["detail"]["EC2InstanceId"]
            if event["detail-type"].startswith("EC2 Instance-launch"):
                self.fleet.boot(instance_id)
            self.emit(event)
        for instance_id in list(self.fleet.servers):
            reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
            state = reservations[0]["Instances"][0]["State"]["Name"]
            if state in {"shutting-down", "terminated"}:
                self.fleet.kill(instance_id)

    def run(self, max_deliveries: int = 200) -> list[Delivery]:
        self.observe_group()
        while self.pool:
            if len(self.log) >= max_deliveries:
                raise AssertionError(f"scenario did not settle after {max_deliveries} deliveries")
            event = self.pool.pop()
            function = FUNCTION_FOR[event["detail-type"]]
            outcome = invoke(function, event, self.deps, clock=self.deps.clock)
            self.log.append(Delivery(event, function, outcome, self.deps.clock.now()))
            self.observe_group()
            self.rng.shuffle(self.pool)
        return self.log
