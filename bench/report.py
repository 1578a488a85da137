"""The bench's printed tables, rendered from the same dictionary that is written as results.json."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for index, row in enumerate(cells):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _size(count: int) -> str:
    return f"{count / 1e6:.2f} MB" if count >= 100_000 else f"{count / 1e3:.1f} kB"


def _ms(summary: dict[str, Any], key: str) -> str:
    return f"{summary[key]:.1f}"


def gateway_section(gateway: dict[str, Any]) -> str:
    workload = gateway["workload"]
    rows = []
    for level in gateway["levels"]:
        for label, key in (("/generate", "generate"), ("stream TTFT", "stream_ttft"), ("stream total", "stream_total")):
            part = level[key]
            rows.append(
                (
                    level["clients"],
                    label,
                    part["direct"]["n"],
                    _ms(part["direct"], "p50_ms"),
                    _ms(part["gateway"], "p50_ms"),
                    f"{part['p50_ratio']:.3f}",
                    f"{part['p50_overhead_ms']:+.1f}",
                    _ms(part["direct"], "p99_ms"),
                    _ms(part["gateway"], "p99_ms"),
                    f"{part['p99_ratio']:.3f}",
                )
            )
    head = (
        f"Gateway overhead ({workload['max_new_tokens']} tokens, emulator {workload['emulator_token_delay_ms']:g} ms "
        "per token, interleaved A/B, keep-alive)\n"
        "note: at 8 and 32 clients one gateway process serves them all, on the cores the emulator and the clients "
        "use; deployed, each Lambda environment serves one request at a time"
    )
    header = ("clients", "workload", "n/arm", "direct p50", "gw p50", "ratio", "+ms", "direct p99", "gw p99", "ratio")
    return head + "\n" + table(header, rows)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def cold_section(cold: dict[str, Any]) -> str:
    rows = []
    for name, result in cold["targets"].items():
        if "import_ms" not in result:
            continue
        heavy = ", ".join(f"{h['package']} {h['self_ms']:g}" for h in result.get("heaviest_imports", [])[:4])
        compiled = sum(result.get("compiled", {}).values())
        rows.append(
            (
                name,
                f"{result['import_ms']:.0f}",
                _ratio(result["import_ratio_to_boto3"]),
                f"{result['import_cpu_ms']:.0f}",
                _ratio(result["import_cpu_ratio_to_boto3"]),
                f"{result['total_ms']:.0f}",
                _ratio(result["total_ratio_to_boto3"]),
                compiled,
                heavy,
            )
        )
    out = [
        "Cold start as Lambda runs it (sam build's artifacts, read-only, no .pyc written, sys.path in Lambda's "
        f"order; median of {cold['repeats']} fresh interpreters; baseline import boto3 = {cold['baseline_ms']:g} ms, "
        f"{cold.get('baseline_cpu_ms', 0):g} ms CPU)",
        table(
            (
                "target",
                "import ms",
                "/ boto3",
                "CPU ms",
                "/ boto3",
                "+clients ms",
                "/ boto3",
                "compiled",
                "heaviest imports (self ms)",
            ),
            rows,
        ),
    ]
    gateway = cold.get("gateway_process")
    if gateway:
        out.append(
            f"gateway: run.sh start to the first answered request {gateway['ready_ms']:g} ms "
            f"({gateway['cpu_ms']:g} ms CPU) against a fresh process importing boto3 "
            f"{gateway['boto3_process_ms']:g} ms "
            f"({gateway['boto3_process_cpu_ms']:g} ms CPU): {_ratio(gateway['ratio_to_boto3_process'])} "
            f"(CPU {_ratio(gateway['cpu_ratio_to_boto3_process'])})"
        )
    clients = cold["targets"].get("boto3-clients", {}).get("client_ms")
    if clients:
        out.append("client build after import boto3 (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in clients.items()))
    sizes = cold.get("sizes")
    if sizes and "error" in sizes:
        out.append(f"Package sizes: not measured ({sizes['error'][:300]})")
    elif sizes:
        size_rows = [
            (
                name,
                artifact["logical_id"],
                _size(artifact["unzipped_bytes"]),
                _size(artifact.get("zipped_bytes", 0)),
                f"{artifact.get('bytecode_files', 0)}/{artifact.get('source_files', 0)}",
                ", ".join(f"{e['entry']} {_size(e['bytes'])}" for e in artifact["largest"][:3]),
            )
            for name, artifact in sizes["artifacts"].items()
        ]
        out.append(f"Package sizes after sam build ({sizes['build_dir']})")
        out.append(table(("artifact", "logical id", "unzipped", "zipped", ".pyc/.py", "largest entries"), size_rows))
    return "\n".join(out)


def reaction_section(reaction: dict[str, Any]) -> str:
    rows = [
        (
            e["event"],
            e["function"],
            e["outcome"],
            f"{e['wall_ms_median']:.1f}",
            e["api_calls"],
            e.get("calls_until_replacement_requested", ""),
        )
        for e in reaction["events"]
    ]
    return (
        f"Reaction (real handlers on moto server, median of {reaction['repeats']}; calls via botocore events)\n"
        + table(("event", "function", "outcome", "wall ms", "API calls", "to replacement"), rows)
        + "\nwarning -> replacement: "
        + " -> ".join(reaction["warning_calls_in_order"][: (reaction["warning_to_replacement_calls"] or 0)])
    )


def failover_section(failover: dict[str, Any]) -> str:
    rows = [
        (
            f"{r['load_seconds']:g}" + (" (model)" if r.get("load_source") == "model" else ""),
            r["scenario"],
            r["who"],
            r["sent"],
            r["failed"],
            f"{r['downtime_seconds']:g}" + ("" if r["recovered"] else " (not recovered)"),
            "" if r.get("downtime_bound_seconds") is None else f"{r['downtime_bound_seconds']:g}",
        )
        for r in failover["rows"]
    ]
    out = "Failover (game day drill, simulated seconds)\n" + table(
        ("launch-to-ready s", "scenario", "who", "requests", "failed", "downtime s", "bound s"), rows
    )
    for load, error in failover.get("errors", {}).items():
        out += f"\ndrill at {load} s: ERROR {error}"
    return out


def cost_section(cost: dict[str, Any]) -> str:
    prices = cost["prices"]
    rows = [
        (
            name,
            f"{s['spot_instance_seconds']:g}",
            f"{s['on_demand_instance_seconds']:g}",
            f"{s['instances_usd_per_hour']:.3f}",
            f"{s['request_path_usd_per_hour'] + s['control_plane_usd_per_hour']:.4f}",
            f"{s['total_usd_per_hour']:.3f}",
            f"{s['vs_always_on_demand']:.2f}",
        )
        for name, s in cost["scenarios"].items()
    ]
    rows.append(
        (
            "steady Spot (no event)",
            "",
            "",
            f"{prices['spot_usd_per_hour']:.3f}",
            f"{cost['steady_spot_usd_per_hour'] - prices['spot_usd_per_hour']:.4f}",
            f"{cost['steady_spot_usd_per_hour']:.3f}",
            f"{cost['steady_spot_vs_always_on_demand']:.2f}",
        )
    )
    rows.append(
        (
            "always On-Demand (alternative)",
            "",
            "",
            f"{prices['on_demand_usd_per_hour']:.3f}",
            "0",
            f"{prices['on_demand_usd_per_hour']:.3f}",
            "1.00",
        )
    )
    return (
        f"Cost, {cost['instance_type']} us-east-1 (EC2 prices as of {prices['ec2_as_of']}, "
        f"Spot {prices['spot_usd_per_hour']:g} / On-Demand {prices['on_demand_usd_per_hour']:g} USD/h); "
        f"drill at {cost['drill_load_seconds']:g} s load, {cost['requests_per_hour']:g} requests/h; "
        f"API Gateway + gateway Lambda {cost['per_million_requests_usd']:g} USD per million requests\n"
        + table(
            ("mix", "Spot inst-s", "OD inst-s", "instances $/h", "requests+control $/h", "total $/h", "vs OD"), rows
        )
    )


def targets_section(targets: list[dict[str, str]]) -> str:
    rows = [(t["verdict"], t["name"], t["limit"], t["measured"]) for t in targets]
    return "Targets\n" + table(("verdict", "target", "limit", "measured"), rows)


def _launch_section(launch: dict[str, Any]) -> str:
    from bench.launch import section  # bench.launch imports table from here

    return section(launch)


def _replicas_section(replicas: dict[str, Any]) -> str:
    from bench.replicas import section  # bench.replicas imports table from here

    return section(replicas)


def _availability_section(result: dict[str, Any]) -> str:
    from bench.availability import render

    return "\n".join(render(result))


def render(results: dict[str, Any]) -> str:
    sections = []
    for key, render_one in (
        ("gateway_overhead", gateway_section),
        ("cold_start", cold_section),
        ("reaction", reaction_section),
        ("failover", failover_section),
        ("cost", cost_section),
        ("launch", _launch_section),
        ("replicas", _replicas_section),
        ("availability", _availability_section),
    ):
        part = results.get(key)
        if isinstance(part, dict) and "error" in part:
            sections.append(f"{key}: ERROR {part['error']}")
        elif part:
            sections.append(render_one(part))
    sections.append(targets_section(results.get("targets", [])))
    return "\n\n".join(sections)
