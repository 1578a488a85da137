"""Cost: what an hour of the drill's mix costs at list prices, against one always-on On-Demand instance.

Inputs, none of them typed in here: list prices and their date (``local/spotkeeper_local/prices.json``, the
drill's too); each scenario's instance lifetimes and purchase options (the drill's timeline: "<id> launched
(spot|on-demand)", "<id> terminated", "<id> reclaimed by Spot"); the request rate (the drill's request
interval); the gateway's overhead (measured above) plus the generation time the gateway Lambda streams
(prices.json assumptions); memory sizes and schedules of the functions (template.yaml); the control handlers'
wall times (measured above).

The alternative a user would pick without spotkeeper to stay up is one On-Demand instance, always on, with
clients on its Elastic IP: no API Gateway, no Lambda.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.servers import ROOT

PRICES_PATH = ROOT / "local" / "spotkeeper_local" / "prices.json"  # the drill quotes its Spot prices too
_LAUNCHED = re.compile(r"^(i-[0-9a-f]+) launched \((spot|on-demand)\)")
_GONE = re.compile(r"^(i-[0-9a-f]+) (terminated|reclaimed by Spot)")
_INSTANCE = re.compile(r"\b(i-[0-9a-f]{8,17})\b")
_RATE = re.compile(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)")


class CostError(RuntimeError):
    pass


@dataclass(frozen=True)
class CostConfig:
    instance_type: str | None = None  # default: prices.json assumptions.chosen_instance_type
    load_seconds: float | None = None  # which drill run's mix; default: the middle load time measured
    prices_path: Path = PRICES_PATH


def load_prices(path: Path = PRICES_PATH) -> dict[str, Any]:
    try:
        prices = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CostError(f"{path}: not a readable price file: {error}") from error
    for section in ("ec2_linux_hourly", "lambda_arm64", "api_gateway_rest", "assumptions"):
        if section not in prices:
            raise CostError(f"{path}: no {section!r} section")
        if section != "assumptions" and not prices[section].get("as_of"):
            raise CostError(f"{path}: {section} has no as_of date")
    from spotkeeper.market import ON_DEMAND_HOURLY_USD  # the one On-Demand price table: the product's

    for name, entry in prices["ec2_linux_hourly"]["types"].items():
        entry["on_demand"] = ON_DEMAND_HOURLY_USD.get(name)
        for key in ("on_demand", "spot_typical"):
            value = entry.get(key)
            if not isinstance(value, int | float) or value <= 0:
                raise CostError(f"{path}: {name}.{key} must be a positive price, got {value!r}")
    return prices


def instance_seconds(
    timeline: list[dict[str, Any]], played: float, purchase_options: dict[str, str] | None = None
) -> dict[str, float]:
    """Seconds of each purchase option within [0, played] of a scenario, read from its timeline.

    An instance whose launch the timeline does not show was running before the window; its option is the
    one the scenario reports for it, else Spot (the group is Spot-first).
    """
    born: dict[str, tuple[float, str]] = {}
    ended: dict[str, float] = {}
    for entry in timeline:
        text, t = str(entry.get("event", "")), float(entry.get("t", 0.0))
        launched = _LAUNCHED.match(text)
        if launched and launched.group(1) not in born:
            born[launched.group(1)] = (t, launched.group(2))
            continue
        gone = _GONE.match(text)
        if gone and gone.group(1) not in ended:
            ended[gone.group(1)] = t
        for instance_id in _INSTANCE.findall(text):
            if instance_id not in born:
                option = (purchase_options or {}).get(instance_id, "spot")
                born[instance_id] = (float("-inf"), option if option in ("spot", "on-demand") else "spot")
    totals = {"spot": 0.0, "on-demand": 0.0}
    for instance_id, (start, option) in born.items():
        end = ended.get(instance_id, played)
        totals[option] += max(0.0, min(end, played) - max(start, 0.0))
    return totals


def _template_facts() -> dict[str, Any]:
    from spotkeeper_local.embedded_aws import load_sam_template

    template = load_sam_template(ROOT / "template.yaml")
    default_memory = int(template.get("Globals", {}).get("Function", {}).get("MemorySize", 128))
    functions: dict[str, dict[str, Any]] = {}
    for resource in template.get("Resources", {}).values():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        properties = resource.get("Properties", {})
        name = Path(str(properties.get("CodeUri", "")).rstrip("/")).name
        per_hour = 0.0
        for event in (properties.get("Events") or {}).values():
            if event.get("Type") == "Schedule":
                match = _RATE.fullmatch(str(event.get("Properties", {}).get("Schedule", "")).strip())
                if match:
                    unit = {"minute": 60, "hour": 3600, "day": 86400}[match.group(2).rstrip("s")]
                    per_hour += 3600 / (int(match.group(1)) * unit)
        functions[name] = {
            "memory_mb": int(properties.get("MemorySize", default_memory)),
            "scheduled_per_hour": per_hour,
        }
    return functions


def _lambda_cost(prices: dict[str, Any], memory_mb: int, seconds: float) -> float:
    billed = math.ceil(seconds * 1000.0) / 1000.0  # 1 ms increments
    return (
        memory_mb / 1024.0 * billed * prices["lambda_arm64"]["usd_per_gb_second"]
        + prices["lambda_arm64"]["usd_per_million_requests"] / 1e6
    )


def per_request(prices: dict[str, Any], gateway_memory_mb: int, gateway_overhead_ms: float) -> dict[str, float]:
    """USD per request through API Gateway and the streaming gateway Lambda."""
    assumptions = prices["assumptions"]
    generation_seconds = assumptions["tokens_per_request"] * assumptions["decode_ms_per_token"] / 1000.0
    seconds = generation_seconds + max(0.0, gateway_overhead_ms) / 1000.0
    lambda_usd = _lambda_cost(prices, gateway_memory_mb, seconds)
    api_usd = prices["api_gateway_rest"]["usd_per_million_requests"] / 1e6
    return {
        "gateway_lambda_seconds": round(seconds, 4),
        "lambda_usd": lambda_usd,
        "api_gateway_usd": api_usd,
        "total_usd": lambda_usd + api_usd,
    }


def compute(
    failover: dict[str, Any],
    gateway: dict[str, Any] | None,
    reaction: dict[str, Any] | None,
    config: CostConfig,
) -> dict[str, Any]:
    prices = load_prices(config.prices_path)
    instance_type = config.instance_type or prices["assumptions"]["chosen_instance_type"]
    types = prices["ec2_linux_hourly"]["types"]
    if instance_type not in types:
        raise CostError(f"no prices for {instance_type}: prices.json has {sorted(types)}")
    spot_price, od_price = types[instance_type]["spot_typical"], types[instance_type]["on_demand"]

    reports = failover.get("reports", {})
    if not reports:
        raise CostError("the failover drill produced no report: the drill's mix is unknown")
    loads = sorted(reports, key=float)
    load_key = f"{config.load_seconds:g}" if config.load_seconds is not None else loads[len(loads) // 2]
    if load_key not in reports:
        raise CostError(f"no drill report at {load_key} s load (have {loads})")
    report = reports[load_key]
    requests_per_hour = 3600.0 / float(report.get("request_interval_seconds", 2.0))

    functions = _template_facts()
    overhead_ms = 0.0
    if gateway:
        one_client = next((level for level in gateway.get("levels", []) if level["clients"] == 1), None)
        if one_client is not None:
            overhead_ms = float(one_client["stream_total"]["p50_overhead_ms"])
    request = per_request(prices, functions.get("gateway", {}).get("memory_mb", 512), overhead_ms)

    control_per_hour = 0.0
    control_detail = {}
    if reaction:
        wall = {e["event"]: e["wall_ms_median"] for e in reaction.get("events", [])}
        for name, event in (("health", "schedule"), ("capacity", "capacity-schedule")):
            facts = functions.get(name)
            if facts and event in wall:
                cost = facts["scheduled_per_hour"] * _lambda_cost(prices, facts["memory_mb"], wall[event] / 1000.0)
                control_detail[name] = {"invocations_per_hour": facts["scheduled_per_hour"], "usd_per_hour": cost}
                control_per_hour += cost

    request_path_per_hour = requests_per_hour * request["total_usd"]
    scenarios: dict[str, Any] = {}
    for name, scenario in report.get("scenarios", {}).items():
        played = float(scenario.get("duration") or 0.0)
        if played <= 0:
            continue
        seconds = instance_seconds(scenario.get("timeline", []), played, scenario.get("purchase_options"))
        if seconds["spot"] + seconds["on-demand"] <= 0:
            # Every scenario has an instance serving: the drill's timeline wording must have changed.
            raise CostError(f"no instance lifetime found in the {name} scenario's timeline (launched/terminated lines)")
        instances_per_hour = (seconds["spot"] * spot_price + seconds["on-demand"] * od_price) / played
        spotkeeper = name != "baseline"
        total = instances_per_hour + (request_path_per_hour + control_per_hour if spotkeeper else 0.0)
        scenarios[name] = {
            "played_seconds": played,
            "spot_instance_seconds": round(seconds["spot"], 1),
            "on_demand_instance_seconds": round(seconds["on-demand"], 1),
            "instances_usd_per_hour": round(instances_per_hour, 4),
            "request_path_usd_per_hour": round(request_path_per_hour, 4) if spotkeeper else 0.0,
            "control_plane_usd_per_hour": round(control_per_hour, 5) if spotkeeper else 0.0,
            "total_usd_per_hour": round(total, 4),
            "vs_always_on_demand": round(total / od_price, 3),
        }
    steady = spot_price + request_path_per_hour + control_per_hour
    return {
        "instance_type": instance_type,
        "prices": {
            "spot_usd_per_hour": spot_price,
            "on_demand_usd_per_hour": od_price,
            "ec2_as_of": prices["ec2_linux_hourly"]["as_of"],
            "lambda_as_of": prices["lambda_arm64"]["as_of"],
            "api_gateway_as_of": prices["api_gateway_rest"]["as_of"],
        },
        "drill_load_seconds": float(load_key),
        "requests_per_hour": requests_per_hour,
        "per_request": {key: round(value, 9) for key, value in request.items()},
        "per_million_requests_usd": round(request["total_usd"] * 1e6, 2),
        "control_plane": control_detail,
        "always_on_demand_usd_per_hour": od_price,
        "steady_spot_usd_per_hour": round(steady, 4),
        "steady_spot_vs_always_on_demand": round(steady / od_price, 3),
        "scenarios": scenarios,
        "not_included": "EBS volume, public IPv4 / Elastic IP, data transfer, DynamoDB, CloudWatch, SNS "
        "(the same or negligible on both sides at this rate)",
    }
