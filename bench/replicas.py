"""Hedged replicas: cost per hour and modelled availability of N = 1, N = 2 and always-on-demand, side by side.

Cost: list prices and their date from ``local/spotkeeper_local/prices.json`` (``bench.cost.PRICES_PATH``;
On-Demand: the EC2 pricing page, the same figures as ``spotkeeper.market``; Spot: the typical us-east-1 price
there), instances only - the request path and the control plane are the same for N = 1 and N = 2 and are in the
cost part. Set beside SkyServe's published figure: "SkyServe reduces cost by 43% on average while achieving high
resource availability compared to using on-demand replicas" (Mao, Xia, Wu, Chiang, Griggs, Bhardwaj, Yang,
Shenker, Stoica: "SkyServe: Serving AI Models across Regions and Clouds with Spot Instances", EuroSys 2025,
arXiv:2411.01438).

Availability is a model, not a measurement (the N = 2 drill scenarios are not played here): interruptions arrive
at the Spot Instance Advisor's frequency buckets ("the rate at which Spot has reclaimed capacity during the
trailing month": <5%, ..., >20%), independently per replica, every one of them without a rebalance lead (the worst
case: only the two-minute warning). A replica that is taken is out for launch-to-ready - 120 s (the replacement
starts at the warning; launch-to-ready from ``spotkeeper_local.launch_time``). N = 1 is down for all of that;
N = 2 only while both are out at once, which for independent interruptions is lambda^2 * W^2 seconds per second
(the other replica taken within the window W, overlapping W/2 on average, 2 replicas). Correlated reclaims (a
whole pool taken at once) are what the zone and instance-type spread is for; they are not in this model, and
while one happens N = 2 is down like N = 1. On-Demand is counted as always available (hardware failures ignored).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cost import PRICES_PATH, load_prices
from spotkeeper_local.launch_time import PRESETS, failover_downtime, launch_to_ready

SKYSERVE_SAVING = 0.43
SKYSERVE_SOURCE = "SkyServe (Mao et al., EuroSys 2025, arXiv:2411.01438): -43% on average against on-demand replicas"
# The bar: 2 Spot replicas cost at most this share of 2 On-Demand replicas (-55%).
TWO_SPOT_SHARE_LIMIT = 0.45
SPOT_WARNING_SECONDS = 120.0
HOURS_PER_MONTH = 730.0
# Interruptions per instance per month. Spot Instance Advisor's frequency-of-interruption buckets (share of instances
# reclaimed in a month): the upper bounds of "<5%" and "15-20%" (https://aws.amazon.com/ec2/spot/instance-advisor/);
# and a stress case with no source, one reclaim a day, far above any bucket.
INTERRUPTION_BUCKETS = {"<5%/month": 0.05, "15-20%/month": 0.20, "1/day (stress)": 30.0}


def downtime_seconds_per_hour(replicas: int, interruptions_per_hour: float, window_seconds: float) -> float:
    """Expected seconds per hour without any serving replica (independent interruptions, no lead)."""
    if replicas == 1:
        return interruptions_per_hour * window_seconds
    if replicas == 2:
        per_second = interruptions_per_hour / 3600.0
        return 3600.0 * (per_second * window_seconds) ** 2
    raise ValueError("modelled for 1 or 2 replicas")


def run(progress: Callable[[str], None] = print, prices_path: Path = PRICES_PATH) -> dict[str, Any]:
    prices = load_prices(prices_path)
    ec2 = prices["ec2_linux_hourly"]
    rows = []
    for instance_type, entry in ec2["types"].items():
        spot, on_demand = float(entry["spot_typical"]), float(entry["on_demand"])
        rows.append(
            {
                "instance_type": instance_type,
                "n1_spot_usd_per_hour": round(spot, 4),
                "n2_spot_usd_per_hour": round(2 * spot, 4),
                "n1_on_demand_usd_per_hour": round(on_demand, 4),
                "n2_on_demand_usd_per_hour": round(2 * on_demand, 4),
                "two_spot_vs_two_on_demand": round(2 * spot / (2 * on_demand), 3),
                "n2_spot_vs_n1_on_demand": round(2 * spot / on_demand, 3),
            }
        )
    chosen = prices["assumptions"]["chosen_instance_type"]
    availability = []
    for option in ("default", "fastest"):
        preset = _preset(option)
        breakdown = launch_to_ready(options=PRESETS[preset])
        window = failover_downtime(breakdown.total, SPOT_WARNING_SECONDS)
        for bucket, monthly in INTERRUPTION_BUCKETS.items():
            per_hour = monthly / HOURS_PER_MONTH
            one = downtime_seconds_per_hour(1, per_hour, window)
            two = downtime_seconds_per_hour(2, per_hour, window)
            availability.append(
                {
                    "launch_option": preset,
                    "launch_to_ready_seconds": round(breakdown.total, 1),
                    "window_seconds": round(window, 1),
                    "interruptions": bucket,
                    "n1_availability": 1 - one / 3600.0,
                    "n2_availability": 1 - two / 3600.0,
                    "always_on_demand_availability": 1.0,
                    "n1_downtime_seconds_per_month": round(one * HOURS_PER_MONTH, 1),
                    "n2_downtime_seconds_per_month": round(two * HOURS_PER_MONTH, 4),
                }
            )
    row = next(r for r in rows if r["instance_type"] == chosen)
    progress(
        f"  {chosen}: 2 Spot {row['n2_spot_usd_per_hour']:.3f} $/h vs 2 On-Demand "
        f"{row['n2_on_demand_usd_per_hour']:.3f} $/h = {row['two_spot_vs_two_on_demand']:.3f}"
    )
    return {
        "instance_type": chosen,
        "prices_as_of": ec2["as_of"],
        "spot_source": ec2.get("spot_source", ""),
        "on_demand_source": ec2.get("on_demand_source", ""),
        "rows": rows,
        "availability": availability,
        "skyserve_saving": SKYSERVE_SAVING,
        "skyserve_source": SKYSERVE_SOURCE,
        "two_spot_share_limit": TWO_SPOT_SHARE_LIMIT,
    }


def _preset(option: str) -> str:
    names = list(PRESETS)
    if option == "default":
        return names[0]
    return min(names, key=lambda name: launch_to_ready(options=PRESETS[name]).total)


def section(result: dict[str, Any]) -> str:
    from bench.report import table

    lines = [
        f"Hedged replicas: cost per hour (instances, us-east-1, list prices as of {result['prices_as_of']}; Spot = the "
        "typical price in prices.json)",
        table(
            ["type", "N=1 Spot", "N=2 Spot", "1 On-Demand", "2 On-Demand", "2 Spot / 2 OD", "N=2 Spot / 1 OD"],
            [
                [
                    r["instance_type"],
                    f"{r['n1_spot_usd_per_hour']:.3f}",
                    f"{r['n2_spot_usd_per_hour']:.3f}",
                    f"{r['n1_on_demand_usd_per_hour']:.3f}",
                    f"{r['n2_on_demand_usd_per_hour']:.3f}",
                    f"{r['two_spot_vs_two_on_demand']:.3f} ({(r['two_spot_vs_two_on_demand'] - 1) * 100:+.0f}%)",
                    f"{r['n2_spot_vs_n1_on_demand']:.3f}",
                ]
                for r in result["rows"]
            ],
        ),
        f"  beside {result['skyserve_source']}",
        "Modelled availability (independent interruptions, none with a rebalance lead; not a drill measurement)",
        table(
            ["launch option", "launch-to-ready", "interruptions", "N=1", "N=2", "On-Demand", "down/month N=1 / N=2"],
            [
                [
                    a["launch_option"],
                    f"{a['launch_to_ready_seconds']:.0f} s",
                    a["interruptions"],
                    f"{a['n1_availability'] * 100:.4f}%",
                    f"{a['n2_availability'] * 100:.6f}%",
                    "100%",
                    f"{a['n1_downtime_seconds_per_month']:.0f} s / {a['n2_downtime_seconds_per_month']:.3g} s",
                ]
                for a in result["availability"]
            ],
        ),
    ]
    return "\n".join(lines)
