"""`make bench`: gateway overhead, cold starts, reactions, failover, cost, launch-to-ready, hedged replicas (prices and
availability: every hedged scenario at N = 1 and N = 2), in one run.

    python bench/run.py [--only PART ...] [--quick] [--out build/bench] [--instance-type g5.2xlarge]

Prints the tables and the targets (PASS/MISS; a miss does not fail the run) and writes
``<out>/results.json``. Exit status 0 when every part was measured, 2 when a part could not be.
The parts that time things (gateway, cold start) run first, before the drill loads the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, Python puts bench/ itself first on sys.path, where its module names (cost, report, ...)
# could shadow others: the repository root goes there instead, and the modules are imported as bench.*.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import (  # noqa: E402
    availability,
    cold_start,
    cost,
    failover,
    gateway_overhead,
    launch,
    reaction,
    replicas,
    report,
    targets,
)

PARTS = ("gateway", "cold", "reaction", "failover", "cost", "launch", "replicas", "availability")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", choices=PARTS, help="run only this part (repeatable)")
    p.add_argument("--quick", action="store_true", help="fewer samples everywhere (a minute or two)")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "bench", help="where results.json and logs go")
    p.add_argument("--instance-type", default=None, help="the instance type the cost is computed for")
    p.add_argument("--token-delay-ms", type=float, default=5.0, help="the TGI emulator's time per token")
    p.add_argument("--cold-repeats", type=int, default=5, help="fresh interpreters per cold start target")
    p.add_argument("--drill-jobs", type=int, default=1, help="drills run at once (they use simulated time)")
    p.add_argument(
        "--load-seconds",
        type=float,
        action="append",
        help="simulated launch-to-ready times for the failover drill (default: the launch-to-ready model's, 60, "
        "180, 600)",
    )
    return p


def _measure(name: str, results: dict[str, Any], key: str, work: Any) -> None:
    print(f"[{name}]", flush=True)
    started = time.monotonic()
    try:
        results[key] = work()
    except Exception as error:  # a part that cannot be measured is reported, the others still run
        results[key] = {"error": f"{type(error).__name__}: {error}"}
        print(f"  {name}: could not be measured: {error}", flush=True)
    took = time.monotonic() - started
    results["wall_seconds"][key] = round(took, 1)
    print(f"  {name}: {took:.0f} s", flush=True)


def _usable(part: Any) -> Any:
    return part if isinstance(part, dict) and "error" not in part else None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    parts = tuple(args.only or PARTS)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    loads = tuple(args.load_seconds or failover.default_loads())
    quick = args.quick
    started = time.monotonic()
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": _cpus()},
        "wall_seconds": {},
    }

    def progress(line: str) -> None:
        print(line, flush=True)

    if "gateway" in parts:
        config = gateway_overhead.GatewayBenchConfig(
            rounds={1: 10, 8: 4, 32: 2} if quick else {1: 40, 8: 10, 32: 5},
            warmup_rounds=1 if quick else 2,
            token_delay=args.token_delay_ms / 1000.0,
            log_dir=out,
        )
        _measure("gateway overhead", results, "gateway_overhead", lambda: gateway_overhead.run(config, progress))
    if "cold" in parts:
        config_cold = cold_start.ColdStartConfig(repeats=2 if quick else args.cold_repeats)
        _measure("cold start", results, "cold_start", lambda: cold_start.run(config_cold, progress))
    if "reaction" in parts:
        config_reaction = reaction.ReactionConfig(repeats=1 if quick else 3, log_path=out / "reaction.log")
        _measure("reaction", results, "reaction", lambda: reaction.run(config_reaction, progress))
    if "failover" in parts:
        config_failover = failover.FailoverConfig(load_seconds=loads, out_dir=out, jobs=args.drill_jobs)
        _measure("failover", results, "failover", lambda: failover.run(config_failover, progress))
    if "cost" in parts:
        drill = _usable(results.get("failover"))
        if drill is None:
            # The cost needs the drill's mix; without this run's drill, run the middle load time alone.
            middle = (sorted(loads)[len(loads) // 2],)
            drill_config = failover.FailoverConfig(load_seconds=middle, out_dir=out, jobs=1)
            drill = failover.run(drill_config, progress)
        config_cost = cost.CostConfig(instance_type=args.instance_type)
        _measure(
            "cost",
            results,
            "cost",
            lambda: cost.compute(
                drill, _usable(results.get("gateway_overhead")), _usable(results.get("reaction")), config_cost
            ),
        )

    if "launch" in parts:
        _measure("launch-to-ready (model)", results, "launch", lambda: launch.run(progress))
    if "replicas" in parts:
        _measure("hedged replicas (prices, model)", results, "replicas", lambda: replicas.run(progress))
    if "availability" in parts:
        # --quick: a launch-to-ready of 180 s (still longer than the warning) instead of the model's ~451 s
        config_availability = availability.AvailabilityConfig(load_seconds=180.0 if quick else None, out_dir=out)
        _measure(
            "hedged replicas' availability (drill, N = 1 vs N = 2)",
            results,
            "availability",
            lambda: availability.run(config_availability, progress),
        )

    results["targets"] = [t.as_json() for t in targets.evaluate(_usable_parts(results), loads)]
    results["wall_seconds"]["total"] = round(time.monotonic() - started, 1)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print()
    print(report.render(results))
    print()
    misses = sum(1 for t in results["targets"] if t["verdict"] == "MISS")
    measured = ("gateway_overhead", "cold_start", "reaction", "failover", "cost", "launch", "replicas", "availability")
    errors = [key for key in measured if isinstance(results.get(key), dict) and "error" in results[key]]
    print(
        f"bench: {len(results['targets']) - misses} targets met, {misses} missed"
        + (f", NOT MEASURED: {', '.join(errors)}" if errors else "")
        + f"; {results['wall_seconds']['total']:.0f} s; results in {path}"
    )
    return 2 if errors else 0


def _usable_parts(results: dict[str, Any]) -> dict[str, Any]:
    return {key: _usable(value) for key, value in results.items()}


def _cpus() -> int | None:
    import os

    return os.cpu_count()


if __name__ == "__main__":
    sys.exit(main())
