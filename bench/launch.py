"""Launch-to-ready: the modelled time from a replacement's launch until TGI answers, for each fast-start option.

Not a measurement (no GPU here): ``spotkeeper_local.launch_time`` combines the constants of
``local/spotkeeper_local/data/launch_times.yaml``, each with its public source, for the template's default
model on its default instance type. The failover downtime is what a single instance (N = 1) loses on an
interruption without warning lead: the replacement starts at the 2-minute warning, so everything past it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.report import table
from spotkeeper_local.launch_time import PRESETS, failover_downtime, launch_to_ready, load_data

SPOT_WARNING_SECONDS = 120.0
FASTEST_TARGET_SECONDS = 150.0


def run(progress: Callable[[str], None] = print) -> dict[str, Any]:
    rows = []
    for name, options in PRESETS.items():
        breakdown = launch_to_ready(options=options)
        rows.append(
            {
                "option": name,
                **{phase.name: round(phase.seconds, 1) for phase in breakdown.phases},
                "total_seconds": round(breakdown.total, 1),
                "downtime_n1_seconds": round(failover_downtime(breakdown.total, SPOT_WARNING_SECONDS), 1),
                "notes": list(breakdown.notes),
                "breakdown": breakdown.as_json(),
            }
        )
        progress(f"  {name}: {breakdown.total:.0f} s")
    data = load_data()
    estimates = sorted(
        f"{section}.{name}"
        for section in ("phases", "network", "sources", "verify", "image", "storage")
        for name, entry in data[section].items()
        if entry.get("estimate")
    )
    return {
        "instance_type": rows[0]["breakdown"]["instance_type"],
        "model": rows[0]["breakdown"]["model"],
        "rows": rows,
        "estimated_constants": estimates,
        "reference_minutes": data["reference"]["ml_node_ready_minutes"],
    }


def section(launch: dict[str, Any]) -> str:
    header = ("option", "boot s", "image s", "weights s", "load+warmup s", "launch-to-ready s", "downtime N=1 s")
    body = [
        (
            r["option"],
            f"{r['boot']:.0f}",
            f"{r['image']:.0f}",
            f"{r['weights']:.0f}",
            f"{r['load+warmup']:.0f}",
            f"{r['total_seconds']:.0f}",
            f"{r['downtime_n1_seconds']:.0f}",
        )
        for r in launch["rows"]
    ]
    lines = [
        f"Launch-to-ready (modelled) - {launch['model']} on {launch['instance_type']}; "
        "downtime = max(0, total - 120 s)",
        table(header, body),
        "constants: local/spotkeeper_local/data/launch_times.yaml (each with its source); estimates: "
        + ", ".join(launch["estimated_constants"]),
    ]
    notes = sorted({note for r in launch["rows"] for note in r["notes"]})
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def fastest_seconds(launch: dict[str, Any] | None) -> float | None:
    if not launch:
        return None
    return min(r["total_seconds"] for r in launch["rows"])
