"""The EC2 calls that ask the Spot market about the group's instance types in its zones.

Two signals, in order of trust: Spot placement scores (how likely a request for one instance of these
types is to succeed, per Availability Zone, 1-10) and the Spot price history (a current Spot price for a
type in a zone means Spot is offered there; a price well under On-Demand means it is not scarce). The
second is only asked when the first cannot be had (not permitted, not offered in the partition, ...).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from spotkeeper.aws import error_code
from spotkeeper.market import MarketUnavailable, PlacementScore, ScoresUnavailable, SpotPrice, Zone
from spotkeeper.observability import logger

# Linux AMIs (the Deep Learning AMI): AWS reports VPC prices under either description.
LINUX_PRODUCTS = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)")
MAX_PRICE_PAGES = 5


class SpotMarket:
    def __init__(self, ec2: Any) -> None:
        self._ec2 = ec2

    @property
    def region(self) -> str:
        return self._ec2.meta.region_name

    def zones(self, subnet_ids: tuple[str, ...] | list[str]) -> list[Zone]:
        if not subnet_ids:
            return []
        try:
            subnets = self._ec2.describe_subnets(SubnetIds=list(subnet_ids))["Subnets"]
        except ClientError as error:
            raise MarketUnavailable(f"DescribeSubnets: {error_code(error) or error}") from error
        found = {Zone(s["AvailabilityZone"], s.get("AvailabilityZoneId") or "") for s in subnets}
        return sorted(found, key=lambda zone: zone.name)

    def placement_scores(
        self, instance_types: tuple[str, ...] | list[str], target_capacity: int = 1
    ) -> list[PlacementScore]:
        """Per-zone scores in this region for ``target_capacity`` instances of any of ``instance_types``."""
        try:
            response = self._ec2.get_spot_placement_scores(
                InstanceTypes=list(instance_types),
                TargetCapacity=target_capacity,
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
            try:
                response = self._ec2.describe_spot_price_history(**kwargs)
            except ClientError as error:
                raise MarketUnavailable(f"DescribeSpotPriceHistory: {error_code(error) or error}") from error
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
