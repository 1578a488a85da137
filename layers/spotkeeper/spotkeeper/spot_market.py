"""What the Spot market says about the group's instance types in its zones, and what On-Demand costs.

Two signals, in order of trust: Spot placement scores (how likely a request for one instance of these
types is to succeed, per Availability Zone, 1-10) and the Spot price history (a current Spot price for a
type in a zone means Spot is offered there; a price well under On-Demand means it is not scarce). The
second is only asked when the first cannot be had (not permitted, not offered in the partition, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from spotkeeper.aws import error_code
from spotkeeper.observability import logger

# On-Demand list prices, USD per hour, Linux, us-east-1, as published on the EC2 pricing page on this date
# (P4d and P5 after their June 2025 price cut). They only size the saving in an alert, never a decision;
# other regions differ by a few percent.
ON_DEMAND_PRICES_AS_OF = "2025-06-15"
ON_DEMAND_PRICES_REGION = "us-east-1"
ON_DEMAND_HOURLY_USD: dict[str, float] = {
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g5.4xlarge": 1.624,
    "g5.8xlarge": 2.448,
    "g5.12xlarge": 5.672,
    "g5.16xlarge": 4.096,
    "g5.24xlarge": 8.144,
    "g5.48xlarge": 16.288,
    "g6.xlarge": 0.8048,
    "g6.2xlarge": 0.9776,
    "g6.4xlarge": 1.3232,
    "g6.8xlarge": 2.0144,
    "g6.12xlarge": 4.6016,
    "g6.16xlarge": 3.3968,
    "g6.24xlarge": 6.6752,
    "g6.48xlarge": 13.3504,
    "g6e.xlarge": 1.861,
    "g6e.2xlarge": 2.24208,
    "g6e.4xlarge": 3.00424,
    "g6e.8xlarge": 4.52856,
    "g6e.12xlarge": 10.49264,
    "g6e.16xlarge": 7.57719,
    "g6e.24xlarge": 15.06559,
    "g6e.48xlarge": 30.13118,
    "p4d.24xlarge": 21.96,
    "p5.48xlarge": 55.04,
}

# Linux AMIs (the Deep Learning AMI): AWS reports VPC prices under either description.
LINUX_PRODUCTS = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)")
MAX_PRICE_PAGES = 5


@dataclass(frozen=True)
class Zone:
    name: str  # us-east-1a
    zone_id: str  # use1-az6: placement scores name zones by id, which is the same physical zone in every account


@dataclass(frozen=True)
class PlacementScore:
    region: str
    zone_id: str | None
    score: int


@dataclass(frozen=True)
class SpotPrice:
    instance_type: str
    zone: str
    usd_per_hour: float
    since: float  # when this price took effect


class ScoresUnavailable(RuntimeError):
    """Spot placement scores cannot be had here (permission, partition, quota); use the price signal."""


def on_demand_price(instance_type: str | None) -> float | None:
    return ON_DEMAND_HOURLY_USD.get(instance_type or "")


class SpotMarket:
    def __init__(self, ec2: Any) -> None:
        self._ec2 = ec2

    @property
    def region(self) -> str:
        return self._ec2.meta.region_name

    def zones(self, subnet_ids: tuple[str, ...] | list[str]) -> list[Zone]:
        if not subnet_ids:
            return []
        subnets = self._ec2.describe_subnets(SubnetIds=list(subnet_ids))["Subnets"]
        found = {Zone(s["AvailabilityZone"], s.get("AvailabilityZoneId") or "") for s in subnets}
        return sorted(found, key=lambda zone: zone.name)

    def placement_scores(self, instance_types: tuple[str, ...] | list[str]) -> list[PlacementScore]:
        """Per-zone scores in this region for one instance of any of ``instance_types``."""
        try:
            response = self._ec2.get_spot_placement_scores(
                InstanceTypes=list(instance_types),
                TargetCapacity=1,
                TargetCapacityUnitType="units",
                SingleAvailabilityZone=True,
                RegionNames=[self.region],
                MaxResults=10,
            )
        except ClientError as error:
            logger.warning("Spot placement scores unavailable", extra={"code": error_code(error)})
            raise ScoresUnavailable(error_code(error) or str(error)) from error
        return [
            PlacementScore(s.get("Region", self.region), s.get("AvailabilityZoneId"), int(s["Score"]))
            for s in response.get("SpotPlacementScores", [])
            if s.get("Score") is not None
        ]

    def current_prices(
        self, instance_types: tuple[str, ...] | list[str], zones: list[Zone], now: float
    ) -> list[SpotPrice]:
        """The Spot price in effect now for each type in each zone where it is offered.

        Asked from an hour back: AWS returns the changes in that window plus the last change before it,
        so a price that has not moved for days is still there. The newest record per type and zone wins.
        """
        kwargs: dict[str, Any] = {
            "InstanceTypes": list(instance_types),
            "ProductDescriptions": list(LINUX_PRODUCTS),
            "StartTime": datetime.fromtimestamp(now - 3600, UTC),
            "EndTime": datetime.fromtimestamp(now, UTC),
            "Filters": [{"Name": "availability-zone", "Values": [zone.name for zone in zones]}],
        }
        newest: dict[tuple[str, str], SpotPrice] = {}
        for _ in range(MAX_PRICE_PAGES):
            response = self._ec2.describe_spot_price_history(**kwargs)
            for record in response.get("SpotPriceHistory", []):
                price = SpotPrice(
                    instance_type=record["InstanceType"],
                    zone=record["AvailabilityZone"],
                    usd_per_hour=float(record["SpotPrice"]),
                    since=record["Timestamp"].timestamp(),
                )
                key = (price.instance_type, price.zone)
                if key not in newest or newest[key].since < price.since:
                    newest[key] = price
            if not response.get("NextToken"):
                break
            kwargs["NextToken"] = response["NextToken"]
        return sorted(newest.values(), key=lambda p: (p.usd_per_hour, p.instance_type, p.zone))
