"""Hedged replicas' availability, measured: every hedged scenario of the drill played at N = 2 and at N = 1.

    python -m spotkeeper_local.drill --json --clients K --scenario-file scenarios/S.yaml ...      (N = 2)
    python -m spotkeeper_local.drill --json --clients K --scenario-file scenarios/n1/S.yaml ...   (N = 1)

Each hedged scenario file (``setup.replicas: 2``) has its N = 1 counterpart of the same name in ``scenarios/n1/``:
the same events for the single instance (a warning for "the other replica" names the only one; a second replica's
warning has no replica to name), with clients of the gateway and of the Elastic IP alike.

Per scenario and N: the longest window without a successful request for the clients through the gateway and for
the clients of the Elastic IP, the failed requests of each, and the capacity mode at the end; then whether N = 2
is at least as available as N = 1 (the issue's must-show: "availability equal to or better than N = 1 in every
scenario"). Time in the drill is simulated: these figures do not depend on this machine.

How availability compares (``at_least_as_available``): for both kinds of client, N = 2's outage is no longer than
N = 1's (within one request interval: the clients sample the endpoint that often) and it failed no more requests.
An outage is the longest window without a success when a request failed, else 0 (the longest gap between two
successes is then the request interval).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.servers import ROOT, python_env

SCENARIOS = ("replica-interruption", "primary-interruption", "zone-spot-lost", "both-warned", "on-demand-return")
REPLICAS = (1, 2)
SCENARIOS_DIR = ROOT / "scenarios"


def scenario_file(name: str, replicas: int) -> Path:
    """The file of ``name`` at N = ``replicas``: scenarios/NAME.yaml (N = 2) or scenarios/n1/NAME.yaml (N = 1)."""
    return SCENARIOS_DIR / ("n1" if replicas == 1 else "") / f"{name}.yaml"


class AvailabilityError(RuntimeError):
    pass


@dataclass(frozen=True)
class AvailabilityConfig:
    scenarios: tuple[str, ...] = SCENARIOS
    clients: int = 2
    load_seconds: float | None = None  # None: the drill's default, the launch-to-ready model's (~451 s)
    out_dir: Path = Path("build/bench")
    timeout_seconds: float = 3600.0
    extra: tuple[str, ...] = field(default_factory=tuple)


def drill_command(replicas: int, config: AvailabilityConfig, out_dir: Path) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "spotkeeper_local.drill",
        "--json",
        "--no-charts",
        f"--out={out_dir}",
        f"--clients={config.clients}",
        *config.extra,
    ]
    if config.load_seconds is not None:
        command.append(f"--load-seconds={config.load_seconds:g}")
    return command + [f"--scenario-file={scenario_file(name, replicas)}" for name in config.scenarios]


def run_drill(replicas: int, config: AvailabilityConfig) -> dict[str, Any]:
    out_dir = (ROOT / config.out_dir / f"availability-n{replicas}").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(  # noqa: S603 - the drill itself, as make demo runs it
        drill_command(replicas, config, out_dir),
        cwd=ROOT,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=config.timeout_seconds,
    )
    # Exit 1: some drill check failed, the report is still the measurement. Anything else is no report.
    if done.returncode not in (0, 1):
        raise AvailabilityError(f"drill at N = {replicas} exited {done.returncode}: {done.stderr.strip()[-800:]}")
    try:
        return json.loads(done.stdout)
    except ValueError as error:
        raise AvailabilityError(f"drill at N = {replicas} printed no JSON report: {done.stdout[-400:]}") from error


def figures(scenario: dict[str, Any]) -> dict[str, Any]:
    """What one played scenario shows its clients (from the drill's JSON report)."""
    facts = scenario.get("facts", {})
    gateway = facts.get("gateway") or _from_clients(scenario.get("clients", {}))
    eip = facts.get("eip_clients", {})
    return {
        "gateway_longest_no_success_seconds": gateway.get("longest_no_success_seconds"),
        "gateway_failed": gateway.get("failed"),
        "gateway_sent": gateway.get("sent"),
        "eip_longest_no_success_seconds": eip.get("longest_no_success_seconds"),
        "eip_failed": eip.get("failed"),
        "eip_sent": eip.get("sent"),
        "no_tgi_up_seconds": facts.get("longest_no_tgi_up_seconds"),
        "capacity_mode": scenario.get("capacity_mode"),
        "drill_checks_passed": bool(scenario.get("passed")),
        "failed_checks": [c.get("name") for c in scenario.get("checks", []) if not c.get("passed")],
    }


def _from_clients(clients: dict[str, Any]) -> dict[str, Any]:
    return {
        "longest_no_success_seconds": clients.get("longest_outage_seconds"),
        "failed": clients.get("failed"),
        "sent": clients.get("sent"),
    }


def outage(longest: float | None, failed: int | None) -> float:
    """The longest window without a success if a request failed, else 0."""
    return float(longest or 0.0) if failed else 0.0


def at_least_as_available(n1: dict[str, Any], n2: dict[str, Any], interval: float) -> tuple[bool, str]:
    """Whether N = 2 (``n2``'s figures) is at least as available as N = 1 (``n1``'s), and why not."""
    reasons = []
    for who in ("gateway", "eip"):
        one = outage(n1[f"{who}_longest_no_success_seconds"], n1[f"{who}_failed"])
        two = outage(n2[f"{who}_longest_no_success_seconds"], n2[f"{who}_failed"])
        if two > one + interval:
            reasons.append(f"{who}: {two:g} s without a success at N = 2, {one:g} s at N = 1")
        if (n2[f"{who}_failed"] or 0) > (n1[f"{who}_failed"] or 0):
            reasons.append(f"{who}: {n2[f'{who}_failed']} failed at N = 2, {n1[f'{who}_failed']} at N = 1")
    return not reasons, "; ".join(reasons)


def compare(reports: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per scenario and N, with N = 2's verdict against N = 1."""
    rows = []
    interval = float(next(iter(reports.values())).get("request_interval_seconds", 2.0)) if reports else 2.0
    names = [n for n in SCENARIOS if any(n in r.get("scenarios", {}) for r in reports.values())]
    for name in names:
        played = {n: figures(r["scenarios"][name]) for n, r in reports.items() if name in r.get("scenarios", {})}
        verdict: tuple[bool, str] | None = None
        if 1 in played and 2 in played:
            verdict = at_least_as_available(played[1], played[2], interval)
        for replicas, row in sorted(played.items()):
            entry = {"scenario": name, "replicas": replicas, **row}
            if replicas == 2 and verdict is not None:
                entry["n2_at_least_n1"] = verdict[0]
                entry["why_not"] = verdict[1]
            rows.append(entry)
    return rows


def run(config: AvailabilityConfig, progress: Any = print) -> dict[str, Any]:
    reports: dict[int, dict[str, Any]] = {}
    wall: dict[str, float] = {}
    for replicas in REPLICAS:
        progress(f"  availability: the hedged scenarios at N = {replicas} ...")
        started = time.monotonic()
        reports[replicas] = run_drill(replicas, config)
        wall[f"n{replicas}"] = round(time.monotonic() - started, 1)
    rows = compare(reports)
    verdicts = [r["n2_at_least_n1"] for r in rows if "n2_at_least_n1" in r]
    return {
        "source": "python -m spotkeeper_local.drill --json --scenario-file (scenarios/ at N = 2, scenarios/n1/ at "
        "N = 1; simulated time)",
        "clients_per_address": config.clients,
        "load_seconds": next(iter(reports.values())).get("load_seconds") if reports else None,
        "request_interval_seconds": next(iter(reports.values())).get("request_interval_seconds") if reports else None,
        "rows": rows,
        "n2_at_least_n1_everywhere": bool(verdicts) and all(verdicts),
        "drill_wall_seconds": wall,
    }


def render(result: dict[str, Any]) -> list[str]:
    """The section's table."""
    lines = [
        f"hedged replicas' availability, N = 1 vs N = 2 (drill, {result.get('clients_per_address')} client(s) through "
        f"the gateway and as many of the EIP, launch-to-ready {result.get('load_seconds')} s)",
        f"{'scenario':<22} {'N':>1}  {'gateway: longest/failed':>23}  {'EIP: longest/failed':>19}  "
        f"{'no TGI up':>9}  {'mode at end':<11}  N=2 >= N=1",
    ]
    for row in result.get("rows", []):
        verdict = {True: "yes", False: "NO", None: ""}[row.get("n2_at_least_n1")]
        gateway = f"{row['gateway_longest_no_success_seconds']} s / {row['gateway_failed']}"
        eip = f"{row['eip_longest_no_success_seconds']} s / {row['eip_failed']}"
        lines.append(
            f"{row['scenario']:<22} {row['replicas']:>1}  {gateway:>23}  {eip:>19}  "
            f"{str(row.get('no_tgi_up_seconds')) + ' s':>9}  {str(row['capacity_mode']).split(' ')[0]:<11}  {verdict}"
            + (f" ({row['why_not']})" if row.get("why_not") else "")
        )
    everywhere = result.get("n2_at_least_n1_everywhere")
    lines.append(f"N = 2 at least as available as N = 1 in every scenario: {'yes' if everywhere else 'NO'}")
    return lines
