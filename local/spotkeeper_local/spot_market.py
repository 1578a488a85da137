"""The Spot market of the embedded AWS, where moto has none.

moto 5.2.5 does not implement ``GetSpotPlacementScores``, its ``DescribeSpotPriceHistory`` answers a fixed price
of 0.00001 from 2006, and Spot capacity never runs out. ``SpotMarket`` stands in for that part of EC2, scripted by
the test or drill:

* Spot capacity: ``capacity`` (whether EC2 has Spot capacity anywhere now) and ``set_capacity`` per instance type
  and/or zone (a zone whose market runs dry, a type that is gone everywhere); ``has_capacity(type, zone)`` is what
  the Auto Scaling group stand-in (``auto_scaling_group.GroupStandIn``) asks before each Spot launch;
* ``GetSpotPlacementScores`` (per-zone scores 1-10, best first, at most MaxResults, validated like AWS):
  ``set_score``, ``withhold_scores`` (scores not permitted: an ``UnauthorizedOperation``); a zone where none of
  the types asked has Spot capacity scores 1 whatever was scripted (the score says how likely a request succeeds);
* ``DescribeSpotPriceHistory`` (the price in effect for each instance type and zone, filtered by type, zone and
  product description): ``set_price``; ``set_typical_prices`` quotes the typical prices of ``prices.json``, the
  one price table the drill and the bench read.

The two calls are answered on a boto3 client (``install``), the way ``lifecycle_hooks.LifecycleHooks`` answers
lifecycle actions. Used by the tests, the drill and the bench, never by the Lambda code.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spotkeeper_local.lifecycle_hooks import answer_locally, aws_error

SCORE_RANGE = range(1, 11)
PRICES_PATH = Path(__file__).resolve().parent / "prices.json"


@dataclass
class _Price:
    usd_per_hour: float
    since: float


@dataclass
class SpotMarket:
    """A scripted Spot market for one region: capacity, a score per zone, a price per instance type and zone."""

    default_score: int = 1
    capacity: bool = True
    clock: Callable[[], float] = time.time
    scores: dict[str, int] = field(default_factory=dict)  # zone id -> score
    prices: dict[tuple[str, str], _Price] = field(default_factory=dict)  # (instance type, zone name) -> price
    withheld: str | None = None
    # (instance types or None: every type, zone names or None: every zone, Spot capacity there); later rules win
    capacity_rules: list[tuple[frozenset[str] | None, frozenset[str] | None, bool]] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    region: str = ""
    zones: dict[str, str] = field(default_factory=dict)  # zone id -> zone name, learnt at install
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # scripting ------------------------------------------------------------------------------------
    def set_score(self, score: int, zone_ids: list[str] | None = None) -> None:
        """Score ``zone_ids`` (every zone of the region when None) from now on."""
        if score not in SCORE_RANGE:
            raise ValueError(f"a Spot placement score is 1-10, got {score}")
        with self._lock:
            if zone_ids is None:
                self.default_score = score
                self.scores.clear()
            else:
                self.scores.update(dict.fromkeys(zone_ids, score))

    def set_price(self, instance_type: str, usd_per_hour: float, zones: list[str] | None = None) -> None:
        """The Spot price of ``instance_type`` in ``zones`` (zone names; every zone when None) from now on."""
        if usd_per_hour <= 0:
            raise ValueError("a Spot price is positive")
        with self._lock:
            for zone in zones or list(self.zones.values()):
                self.prices[(instance_type, zone)] = _Price(usd_per_hour, self.clock())

    def set_typical_prices(self, path: Path = PRICES_PATH) -> None:
        """Quote the typical Spot price of every instance type in the price table, in every zone."""
        for instance_type, price in typical_spot_prices(path).items():
            self.set_price(instance_type, price)

    def set_capacity(
        self, available: bool, instance_types: list[str] | None = None, zones: list[str] | None = None
    ) -> None:
        """Spot capacity for ``instance_types`` in ``zones`` (zone names) from now on; None: every type / zone.
        Neither named: the whole market (earlier per-type or per-zone rules are dropped)."""
        known = set(self.zones.values())
        unknown = sorted(set(zones or ()) - known) if known else []
        if unknown:
            raise ValueError(f"no zone {', '.join(unknown)} in {self.region} (zones: {', '.join(sorted(known))})")
        if instance_types == [] or zones == []:
            raise ValueError("name at least one instance type / zone, or none for all of them")
        with self._lock:
            if instance_types is None and zones is None:
                self.capacity = available
                self.capacity_rules.clear()
                return
            types = frozenset(instance_types) if instance_types is not None else None
            self.capacity_rules.append((types, frozenset(zones) if zones is not None else None, available))

    def has_capacity(self, instance_type: str | None = None, zone: str | None = None) -> bool:
        """Whether a Spot launch of ``instance_type`` in ``zone`` (a zone name) finds capacity now. A rule scoped to
        a type or zone applies only when that type or zone is asked."""
        available = self.capacity
        for types, zones, rule in list(self.capacity_rules):
            if (types is None or instance_type in types) and (zones is None or zone in zones):
                available = rule
        return available

    def withhold_scores(self, code: str | None = "UnauthorizedOperation") -> None:
        """Make GetSpotPlacementScores fail with ``code`` (None gives scores again)."""
        self.withheld = code

    def score_calls(self) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == "GetSpotPlacementScores"]

    # the two API calls ----------------------------------------------------------------------------
    def get_spot_placement_scores(self, params: dict[str, Any]) -> dict[str, Any]:
        operation = "GetSpotPlacementScores"
        with self._lock:
            self.calls.append((operation, dict(params)))
        if self.withheld:
            raise aws_error(operation, self.withheld, "You are not authorized to perform this operation.")
        types, requirements = params.get("InstanceTypes"), params.get("InstanceRequirementsWithMetadata")
        if bool(types) == bool(requirements):
            raise aws_error(
                operation, "InvalidParameterCombination", "Specify InstanceTypes or InstanceRequirementsWithMetadata"
            )
        capacity = params.get("TargetCapacity")
        if not isinstance(capacity, int) or not 1 <= capacity <= 2_000_000_000:
            raise aws_error(operation, "InvalidParameterValue", "TargetCapacity must be 1-2000000000")
        max_results = params.get("MaxResults", 1000)
        if not 10 <= max_results <= 1000:
            raise aws_error(operation, "InvalidParameterValue", "MaxResults must be 10-1000")
        regions = params.get("RegionNames") or [self.region]
        if self.region not in regions:
            return {"SpotPlacementScores": []}
        with self._lock:
            if params.get("SingleAvailabilityZone"):
                scored = [
                    {"Region": self.region, "AvailabilityZoneId": zone_id, "Score": self._score(zone_id, types)}
                    for zone_id in sorted(self.zones)
                ]
            else:
                best = max((self._score(zone_id, types) for zone_id in self.zones), default=self.default_score)
                scored = [{"Region": self.region, "Score": best}]
        scored.sort(key=lambda s: -s["Score"])
        return {"SpotPlacementScores": scored[:max_results]}

    def _score(self, zone_id: str, types: list[str] | None = None) -> int:
        zone = self.zones.get(zone_id)
        if not any(self.has_capacity(instance_type, zone) for instance_type in types or [None]):
            return min(SCORE_RANGE)  # no Spot capacity for any type asked: a request there would not succeed
        return self.scores.get(zone_id, self.default_score)

    def describe_spot_price_history(self, params: dict[str, Any]) -> dict[str, Any]:
        operation = "DescribeSpotPriceHistory"
        with self._lock:
            self.calls.append((operation, dict(params)))
            prices = dict(self.prices)
        types = set(params.get("InstanceTypes") or [])
        products = set(params.get("ProductDescriptions") or [])
        zones: set[str] = set()
        for entry in params.get("Filters") or []:
            if entry.get("Name") == "availability-zone":
                zones.update(entry.get("Values", []))
            elif entry.get("Name") == "instance-type":
                types.update(entry.get("Values", []))
        if params.get("AvailabilityZone"):
            zones.add(params["AvailabilityZone"])
        end = params.get("EndTime")
        until = end.timestamp() if isinstance(end, datetime) else self.clock()
        history = [
            {
                "AvailabilityZone": zone,
                "InstanceType": instance_type,
                "ProductDescription": "Linux/UNIX",
                "SpotPrice": f"{price.usd_per_hour:.6f}",
                "Timestamp": datetime.fromtimestamp(price.since, UTC),
            }
            for (instance_type, zone), price in sorted(prices.items())
            if (not types or instance_type in types)
            and (not zones or zone in zones)
            and (not products or "Linux/UNIX" in products)
            and price.since <= until
        ]
        return {"SpotPriceHistory": history, "NextToken": ""}

    def install(self, ec2_client: Any) -> None:
        """Answer the two calls on this EC2 client; learn the region's zones from it first."""
        self.region = ec2_client.meta.region_name
        zones = ec2_client.describe_availability_zones()["AvailabilityZones"]
        self.zones = {zone["ZoneId"]: zone["ZoneName"] for zone in zones}
        answer_locally(ec2_client, "GetSpotPlacementScores", self.get_spot_placement_scores, service="ec2")
        answer_locally(ec2_client, "DescribeSpotPriceHistory", self.describe_spot_price_history, service="ec2")


def typical_spot_prices(path: Path = PRICES_PATH) -> dict[str, float]:
    """Instance type -> typical Spot price (USD/hour) from the price table."""
    types = json.loads(path.read_text())["ec2_linux_hourly"]["types"]
    return {name: float(entry["spot_typical"]) for name, entry in types.items()}
