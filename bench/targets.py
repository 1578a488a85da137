"""The issue's targets, each checked against this run's numbers: PASS, MISS, or not measured."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

CONTROL_COLD_RATIO = 1.5
GATEWAY_COLD_RATIO = 2.0
GATEWAY_P50_RATIO = {1: 1.05, 32: 1.10}
TTFT_OVERHEAD_MS = 5.0
WARNING_TO_REPLACEMENT_CALLS = 3


@dataclass(frozen=True)
class Target:
    name: str
    limit: str
    measured: str
    verdict: str  # "PASS", "MISS" or "NOT MEASURED"

    def as_json(self) -> dict[str, str]:
        return asdict(self)


def _verdict(ok: bool | None) -> str:
    return "NOT MEASURED" if ok is None else ("PASS" if ok else "MISS")


def _fmt(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:g}{unit}"


def gateway_targets(gateway: dict[str, Any] | None) -> list[Target]:
    levels = {level["clients"]: level for level in (gateway or {}).get("levels", [])}
    found = []
    for clients, limit in GATEWAY_P50_RATIO.items():
        ratio = levels[clients]["generate"]["p50_ratio"] if clients in levels else None
        found.append(
            Target(
                f"gateway p50 / direct p50, /generate, {clients} client(s)",
                f"<= {limit:g}",
                _fmt(ratio),
                _verdict(None if ratio is None else ratio <= limit),
            )
        )
    for clients in sorted(levels) or [1]:
        overhead = levels[clients]["stream_ttft"]["p50_overhead_ms"] if clients in levels else None
        found.append(
            Target(
                f"streaming time-to-first-token overhead (p50), {clients} client(s)",
                f"<= {TTFT_OVERHEAD_MS:g} ms",
                _fmt(overhead, " ms"),
                _verdict(None if overhead is None else overhead <= TTFT_OVERHEAD_MS),
            )
        )
    return found


def cold_start_targets(cold: dict[str, Any] | None) -> list[Target]:
    results = (cold or {}).get("targets", {})
    found = []
    for name in ("interruption", "lifecycle", "health", "capacity", "authorizer"):
        result = results.get(name, {})
        wall, cpu = result.get("import_ratio_to_boto3"), result.get("import_cpu_ratio_to_boto3")
        found.append(
            Target(
                f"cold start of {name}: handler import / import boto3 (as Lambda runs it)",
                f"<= {CONTROL_COLD_RATIO:g}x",
                "n/a" if wall is None else f"{wall:g}x (CPU {_fmt(cpu, 'x')})",
                _verdict(None if wall is None else wall <= CONTROL_COLD_RATIO),
            )
        )
    gateway = (cold or {}).get("gateway_process") or {}
    wall, cpu = gateway.get("ratio_to_boto3_process"), gateway.get("cpu_ratio_to_boto3_process")
    found.append(
        Target(
            "cold start of gateway: run.sh start to first answer / a process importing boto3",
            f"<= {GATEWAY_COLD_RATIO:g}x",
            "n/a" if wall is None else f"{wall:g}x (CPU {_fmt(cpu, 'x')})",
            _verdict(None if wall is None else wall <= GATEWAY_COLD_RATIO),
        )
    )
    return found


def reaction_targets(reaction: dict[str, Any] | None) -> list[Target]:
    calls = (reaction or {}).get("warning_to_replacement_calls")
    return [
        Target(
            "Spot warning -> replacement launch requested",
            f"<= {WARNING_TO_REPLACEMENT_CALLS} AWS API calls",
            _fmt(calls, " calls"),
            _verdict(None if calls is None else calls <= WARNING_TO_REPLACEMENT_CALLS),
        )
    ]


def failover_targets(failover: dict[str, Any] | None, load_seconds: tuple[float, ...]) -> list[Target]:
    rows = (failover or {}).get("rows", [])
    found = []
    for load in load_seconds:
        rebalance = next((r for r in rows if r["scenario"] == "rebalance" and r["load_seconds"] == load), None)
        found.append(
            Target(
                f"scenario 2 (rebalance first), model load {load:g} s: failed requests",
                "0",
                "n/a" if rebalance is None else f"{rebalance['failed']} of {rebalance['sent']}",
                _verdict(None if rebalance is None else rebalance["failed"] == 0),
            )
        )
    for load in load_seconds:
        row = next((r for r in rows if r["scenario"] == "interruption" and r["load_seconds"] == load), None)
        bound = row.get("downtime_bound_seconds") if row else None
        found.append(
            Target(
                f"scenario 1 (interruption), model load {load:g} s: downtime",
                "n/a" if bound is None else f"<= {bound:g} s (max(0, launch-to-ready - 120) + 10)",
                "n/a" if row is None else f"{row['downtime_seconds']:g} s",
                _verdict(None if row is None or bound is None else row["downtime_seconds"] <= bound),
            )
        )
    return found


def evaluate(results: dict[str, Any], load_seconds: tuple[float, ...]) -> list[Target]:
    return [
        *gateway_targets(results.get("gateway_overhead")),
        *cold_start_targets(results.get("cold_start")),
        *reaction_targets(results.get("reaction")),
        *failover_targets(results.get("failover"), load_seconds),
        *launch_targets(results.get("launch")),
        *replicas_targets(results.get("replicas")),
        *availability_targets(results.get("availability")),
    ]


LAUNCH_FASTEST_SECONDS = 150.0


def launch_targets(launch: dict[str, Any] | None) -> list[Target]:
    fastest = min((r["total_seconds"] for r in launch["rows"]), default=None) if launch else None
    model = f"{launch['model']} on {launch['instance_type']}" if launch else "default model"
    return [
        Target(
            f"launch-to-ready (modelled), fastest option, {model}",
            f"<= {LAUNCH_FASTEST_SECONDS:g} s",
            _fmt(fastest, " s"),
            _verdict(None if fastest is None else fastest <= LAUNCH_FASTEST_SECONDS),
        )
    ]


def replicas_targets(replicas: dict[str, Any] | None) -> list[Target]:
    """Issue 12: 2 Spot replicas cost at most 0.45x 2 On-Demand replicas in the bench's price table."""
    row = None
    if replicas:
        row = next((r for r in replicas["rows"] if r["instance_type"] == replicas["instance_type"]), None)
    share = row["two_spot_vs_two_on_demand"] if row else None
    limit = replicas["two_spot_share_limit"] if replicas else 0.45
    where = f"{replicas['instance_type']}, prices as of {replicas['prices_as_of']}" if replicas else "price table"
    return [
        Target(
            f"2 Spot replicas / 2 On-Demand replicas ({where}; SkyServe: 0.57)",
            f"<= {limit:g}",
            _fmt(share),
            _verdict(None if share is None else share <= limit),
        )
    ]


def availability_targets(availability: dict[str, Any] | None) -> list[Target]:
    """Issue 12: availability at N = 2 equal to or better than N = 1 in every scenario (the drill, played)."""
    rows = [r for r in (availability or {}).get("rows", []) if "n2_at_least_n1" in r]
    worse = [r["scenario"] for r in rows if not r["n2_at_least_n1"]]
    measured = "n/a" if not rows else (f"worse in {', '.join(worse)}" if worse else f"{len(rows)} of {len(rows)}")
    return [
        Target(
            "hedged scenarios where N = 2 is at least as available as N = 1 (gateway and EIP clients)",
            "every one",
            measured,
            _verdict(None if not rows else not worse),
        )
    ]
