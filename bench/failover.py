"""Failover: the game day drill (``python -m spotkeeper_local.drill --json``) at several launch-to-ready times.

The realistic one is the drill's own default, the launch-to-ready model's total for the template's default model
on its default instance type (the drill runs without ``--load-seconds`` and reports the breakdown); 60, 180 and
600 s show how the failover scales with it.

Each load time is one drill process playing every scenario: the Spot interruption, the rebalance ahead of the
warning, the Spot capacity outage (spotkeeper) and the same interruption on the plain group (baseline, no
spotkeeper: the EIP stays on the reclaimed instance). Time in the drill is simulated, so the wall time of
this machine does not change the downtimes it reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.servers import ROOT, python_env

SPOTKEEPER_SCENARIOS = ("interruption", "rebalance", "capacity")
BASELINE_SCENARIO = "baseline"
SPOT_NOTICE_SECONDS = 120.0
DOWNTIME_SLACK_SECONDS = 10.0


class FailoverError(RuntimeError):
    pass


def modelled_load_seconds() -> float:
    """The drill's default launch-to-ready: the model's total, as the drill rounds it."""
    from spotkeeper_local.drill import modelled_launch

    return float(round(modelled_launch().total))


def default_loads() -> tuple[float, ...]:
    return tuple(sorted({modelled_load_seconds(), 60.0, 180.0, 600.0}))


@dataclass(frozen=True)
class FailoverConfig:
    load_seconds: tuple[float, ...] = field(default_factory=default_loads)
    scenarios: tuple[str, ...] = ("interruption", "rebalance", "capacity", "baseline")
    out_dir: Path = Path("build/bench")
    jobs: int = 1
    timeout_seconds: float = 900.0


def drill_command(load_seconds: float, scenarios: tuple[str, ...], out_dir: Path) -> list[str]:
    """The drill at ``load_seconds``: its own default (the model, breakdown included) when that is the model's."""
    command = [sys.executable, "-m", "spotkeeper_local.drill", "--json", "--no-charts", f"--out={out_dir}"]
    if load_seconds != modelled_load_seconds():
        command.append(f"--load-seconds={load_seconds:g}")
    for scenario in scenarios:
        command.append(f"--scenario={scenario}")
    return command


def run_drill(load_seconds: float, config: FailoverConfig) -> dict[str, Any]:
    out_dir = (ROOT / config.out_dir / f"drill-load-{load_seconds:g}").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    done = subprocess.run(  # noqa: S603 - the drill itself, as make demo runs it
        drill_command(load_seconds, config.scenarios, out_dir),
        cwd=ROOT,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=config.timeout_seconds,
    )
    wall = time.monotonic() - started
    # Exit 1 means some drill check failed: the report is still the measurement. Anything else is no report.
    if done.returncode not in (0, 1):
        raise FailoverError(f"drill at {load_seconds:g} s exited {done.returncode}: {done.stderr.strip()[-800:]}")
    try:
        report = json.loads(done.stdout)
    except ValueError as error:
        raise FailoverError(f"drill at {load_seconds:g} s printed no JSON report: {done.stdout[-400:]}") from error
    report["bench_wall_seconds"] = round(wall, 1)
    for scenario in report.get("scenarios", {}).values():
        scenario.pop("requests", None)  # one entry per request: the counts above say enough
    return report


def downtime_bound(launch_to_ready: float | None) -> float | None:
    """The target: downtime within 10 s of max(0, launch-to-ready - 120 s) (Spot's notice covers the rest)."""
    if launch_to_ready is None:
        return None
    return max(0.0, launch_to_ready - SPOT_NOTICE_SECONDS) + DOWNTIME_SLACK_SECONDS


def scenario_row(name: str, scenario: dict[str, Any]) -> dict[str, Any]:
    clients = scenario.get("clients", {})
    facts = scenario.get("facts", {})
    launch_to_ready = facts.get("replacement_launch_to_ready_seconds")
    sent, failed = int(clients.get("sent", 0)), int(clients.get("failed", 0))
    downtime = float(clients.get("longest_outage_seconds", 0.0))
    if sent and failed == 0:
        # The longest gap between two successes is then the request interval, not an outage.
        downtime = 0.0
    row: dict[str, Any] = {
        "scenario": name,
        "who": "plain ASG (no spotkeeper)" if name == BASELINE_SCENARIO else "spotkeeper",
        "via": clients.get("via"),
        "sent": sent,
        "failed": failed,
        "downtime_seconds": downtime,
        "recovered": bool(clients.get("recovered", failed == 0)),
        "launch_to_ready_seconds": launch_to_ready,
        "played_seconds": scenario.get("duration"),
        "drill_checks_passed": bool(scenario.get("passed", False)),
        "failed_checks": [c.get("name") for c in scenario.get("checks", []) if not c.get("passed")],
    }
    if name == "interruption":
        row["downtime_bound_seconds"] = downtime_bound(launch_to_ready)
    return row


def _modelled(report: dict[str, Any]) -> bool:
    return (report.get("launch_to_ready") or {}).get("source") == "model"


def summarize(reports: dict[float, dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for load_seconds, report in sorted(reports.items()):
        source = "model" if _modelled(report) else "--load-seconds"
        for name, scenario in report.get("scenarios", {}).items():
            rows.append({"load_seconds": load_seconds, "load_source": source, **scenario_row(name, scenario)})
    return {
        "source": "python -m spotkeeper_local.drill --json (simulated time; one request every "
        f"{next(iter(reports.values())).get('request_interval_seconds', '?')} s)"
        if reports
        else "drill",
        "rows": rows,
        "drill_wall_seconds": {f"{k:g}": r.get("bench_wall_seconds") for k, r in sorted(reports.items())},
        "launch_to_ready": next((r["launch_to_ready"] for r in reports.values() if _modelled(r)), None),
    }


def run(config: FailoverConfig, progress: Any = print) -> dict[str, Any]:
    reports: dict[float, dict[str, Any]] = {}
    errors: dict[str, str] = {}

    def one(load_seconds: float) -> None:
        progress(f"  failover: drill at {load_seconds:g} s model load ...")
        try:
            reports[load_seconds] = run_drill(load_seconds, config)
        except (FailoverError, subprocess.TimeoutExpired) as error:
            errors[f"{load_seconds:g}"] = str(error)

    with ThreadPoolExecutor(max_workers=max(1, config.jobs)) as pool:
        list(pool.map(one, config.load_seconds))
    result = summarize(reports)
    result["errors"] = errors
    # Kept whole for the cost model, which reads instance lifetimes from the timelines.
    result["reports"] = {f"{k:g}": v for k, v in sorted(reports.items())}
    return result
