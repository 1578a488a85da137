"""What the Spot market says, as plain values, and what On-Demand costs.

``spot_market.SpotMarket`` asks EC2 and answers with these; ``logic/capacity`` decides on them.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class FailedPool:
    """A Spot pool whose launch just failed for capacity: a zone, and the instance type when the failure named
    one (a mixed-instances request that failed for every type in the zone names none)."""

    zone: str  # us-east-1a, as Launch Unsuccessful events name it
    instance_type: str | None
    until: float  # left out of the return-to-Spot decision until then


class ScoresUnavailable(RuntimeError):
    """Spot placement scores cannot be had here (permission, partition, quota); use the price signal."""


class MarketUnavailable(RuntimeError):
    """EC2 did not answer a question about zones or Spot prices (throttled, not permitted, ...)."""


def on_demand_price(instance_type: str | None) -> float | None:
    return ON_DEMAND_HOURLY_USD.get(instance_type or "")
