"""The game day drill (`make demo`): spotkeeper's real handlers against an embedded AWS, on a simulated clock.

    python -m spotkeeper_local.drill [--scenario NAME ...] [--scenario-file FILE ...] [--load-seconds N] [--json]
    python -m spotkeeper_local.drill --stack NAME --yes-really-interrupt     # a real game day through AWS FIS

Locally, every scenario deploys the stack from template.yaml into a moto server on loopback, starts one TGI
emulator per instance (on the instance's own private IP), serves the gateway with uvicorn, sends a steady
stream of real requests through it, and plays what a scenario file says AWS (and ops) do: a timeline of
actions at simulated times, then the file's expectations as checks (format: ``scenario_file``; the files in
the top-level ``scenarios/`` folder by default, e.g.):

  interruption   a Spot interruption warning for the serving instance; Spot reclaims it two minutes later
  rebalance      a rebalance recommendation first, the warning later: the replacement is ready in time
  capacity       Spot capacity runs out (the serving instance is interrupted, Spot launches fail): fallback to
                 On-Demand; Spot comes back: fall-forward through a launch-before-terminate instance refresh
  baseline       the interruption again with spotkeeper's reactions off (the plain group, the EIP set by hand),
                 measured by a client of the Elastic IP

Every file is validated before anything plays: a malformed one is an error naming the file, line and field.

It prints a timeline per scenario (simulated seconds, what happened, what spotkeeper did), checks, and a
summary table; ``--json`` prints the same as one JSON object. Charts and logs go to build/drill/.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "build" / "drill"
SCENARIOS_DIR = ROOT / "scenarios"
SCENARIOS = ("interruption", "rebalance", "capacity", "baseline")  # the first four files, chosen by number too
SCENARIO_NUMBERS = {str(index): name for index, name in enumerate(SCENARIOS, start=1)}
FIRST_LOAD_SECONDS = 60.0  # the stack's first instance, before t = 0: not what any scenario is about
MIN_ON_DEMAND_SECONDS = 300  # the stack parameter for the drill (default 1800): the outage scenario stays short
MAX_LOAD_SECONDS = 1500.0  # under the launch hook's deadline (LaunchDeadlineSeconds, 1800 s by default)


@dataclass(frozen=True)
class DrillOptions:
    scenarios: tuple[Path, ...]
    load_seconds: float | None = None  # None: each file's setup says
    request_interval: float | None = None  # None: each file's clients say
    out_dir: Path = OUT_DIR
    as_json: bool = False
    charts: bool = True
    serial_delivery: bool = False


def _scenario_names() -> list[str]:
    return sorted(p.stem for p in SCENARIOS_DIR.glob("*.yaml"))


def _scenario_name(value: str) -> str:
    name = SCENARIO_NUMBERS.get(value, value)
    if name != "all" and not (SCENARIOS_DIR / f"{name}.yaml").is_file():
        raise argparse.ArgumentTypeError(
            f"unknown scenario {value!r}: choose from {', '.join(_scenario_names())}, 1-4 or all"
        )
    return name


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
        if not low <= seconds <= high:
            raise argparse.ArgumentTypeError(f"{seconds:g} is outside {low:g}-{high:g} seconds")
        return seconds

    return parse


def _stack_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,127}", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a CloudFormation stack name")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m spotkeeper_local.drill",
        description="spotkeeper's game day: Spot interruptions and a Spot capacity outage, end to end.",
    )
    p.add_argument(
        "--scenario",
        action="append",
        type=_scenario_name,
        metavar="NAME",
        help="a file of scenarios/ by name (e.g. interruption; 1-4 for the first four, or all); repeatable. "
        "Default, without --scenario-file: every file of scenarios/",
    )
    p.add_argument(
        "--scenario-file",
        action="append",
        type=Path,
        metavar="FILE",
        help="a scenario file (YAML or JSON; see scenarios/schema.json); repeatable",
    )
    p.add_argument(
        "--load-seconds",
        type=_seconds(0, MAX_LOAD_SECONDS),
        default=None,
        help="simulated seconds a new instance takes from launch to TGI ready, for every scenario "
        "(default: what each file's setup says)",
    )
    p.add_argument(
        "--request-interval",
        type=_seconds(0.5, 30),
        default=None,
        help="simulated seconds between two client requests, for every scenario (default: each file's)",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--out", type=Path, default=OUT_DIR, help="where charts, the JSON report and logs go")
    p.add_argument("--no-charts", action="store_true", help="do not draw the availability charts")
    p.add_argument(
        "--serial-delivery",
        action="store_true",
        help="invoke one handler at a time (events wait while a hook handler waits): Lambda throttled to one",
    )
    aws = p.add_argument_group("against a deployed stack (a real game day)")
    aws.add_argument(
        "--stack", type=_stack_name, metavar="NAME", help="the deployed spotkeeper stack to interrupt through AWS FIS"
    )
    aws.add_argument("--region", help="the stack's region (default: the AWS configuration's)")
    aws.add_argument(
        "--yes-really-interrupt",
        action="store_true",
        help="confirm that a real Spot instance of the stack's group may be interrupted",
    )
    aws.add_argument(
        "--watch-seconds",
        type=_seconds(60, 7200),
        default=900.0,
        help="how long to watch the stack after starting the experiment (default 900)",
    )
    return p


def options_from(args: argparse.Namespace) -> DrillOptions:
    from spotkeeper_local.scenario_file import folder

    files: list[Path] = list(args.scenario_file or [])
    chosen = args.scenario or ([] if files else ["all"])
    if "all" in chosen:
        files = [*folder(SCENARIOS_DIR), *files]
    else:
        files = [SCENARIOS_DIR / f"{name}.yaml" for name in dict.fromkeys(chosen)] + files
    return DrillOptions(
        scenarios=tuple(dict.fromkeys(files)),
        load_seconds=args.load_seconds,
        request_interval=args.request_interval,
        out_dir=args.out,
        as_json=args.json,
        charts=not args.no_charts,
        serial_delivery=args.serial_delivery,
    )


# ---------------------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet(log: TextIO) -> Iterator[None]:
    """Everything the handlers and servers print (JSON logs, EMF metrics, warnings) goes to the log file."""
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = log
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def _lambda_environment() -> None:
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "spotkeeper")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Spotkeeper")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "INFO")
    os.environ["POWERTOOLS_TRACE_DISABLED"] = "true"  # no X-Ray daemon here


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_local(options: DrillOptions, progress: Callable[[str], None] = lambda _: None) -> Any:
    """Play the chosen scenarios; return the DrillReport. Output is the caller's."""
    options.out_dir.mkdir(parents=True, exist_ok=True)
    log = (options.out_dir / "drill.log").open("w")
    _lambda_environment()
    started = time.monotonic()
    with _quiet(log):
        from spotkeeper.observability import logger

        handler = getattr(logger, "registered_handler", None)
        if handler is not None and hasattr(handler, "setStream"):
            handler.setStream(log)
        from spotkeeper_local.drill_scenarios import load_seconds_of, play
        from spotkeeper_local.embedded_aws import EmbeddedAws, load_sam_template, local_template
        from spotkeeper_local.report import DrillReport, write_chart

        template = local_template(load_sam_template())
        from spotkeeper_local.scenario_file import load_all

        scenarios = load_all(list(options.scenarios))  # every file valid before anything plays
        if options.request_interval is not None:
            scenarios = [
                s.model_copy(
                    update={
                        "setup": s.setup.model_copy(
                            update={
                                "clients": s.setup.clients.model_copy(update={"interval": options.request_interval})
                            }
                        )
                    }
                )
                for s in scenarios
            ]
        results = []
        with EmbeddedAws() as aws:
            parameters = {
                "TgiPort": str(_free_port()),
                "BackendCacheSeconds": "0",
                "MinOnDemandSeconds": str(MIN_ON_DEMAND_SECONDS),
            }
            # moto splits a CommaDelimitedList only when it is passed, not its default: without this every
            # "!Select [0, !Ref InstanceTypes]" is the default string's first letter ("g"), not an instance type.
            instance_types = template.body.get("Parameters", {}).get("InstanceTypes", {}).get("Default")
            if instance_types:
                parameters["InstanceTypes"] = instance_types
            for index, scenario in enumerate(scenarios, start=1):
                progress(f"[{index}/{len(scenarios)}] {scenario.name} ...")
                result = play(scenario, aws, template, parameters, options, FIRST_LOAD_SECONDS)
                if options.charts:
                    result.chart = str(write_chart(result, options.out_dir))
                results.append(result)
        loads = sorted({load_seconds_of(s.setup, options.load_seconds) for s in scenarios})
        intervals = sorted({s.setup.clients.interval for s in scenarios})
        report = DrillReport(_one_or_all(loads), _one_or_all(intervals), results)
        report.notes.append(
            f"the stack's first instance loads its model in {FIRST_LOAD_SECONDS:g} s (before t=0); every instance "
            f"launched after it in {' or '.join(f'{x:g}' for x in loads)} s (each scenario's setup)"
        )
        report.notes.append(
            "from template.yaml, not deployed into moto but played locally: " + ", ".join(sorted(template.left_out))
        )
    report.wall_seconds = time.monotonic() - started
    (options.out_dir / "report.json").write_text(report.to_json())
    log.close()
    return report


def _one_or_all(values: list[float]) -> float | list[float]:
    return values[0] if len(values) == 1 else values


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = parser().parse_args(argv)
    if args.stack:
        from spotkeeper_local.aws_game_day import run_game_day

        return run_game_day(args, out)
    if args.yes_really_interrupt or args.region:
        parser().error("--yes-really-interrupt and --region only apply with --stack")
    options = options_from(args)
    progress_stream = sys.stderr if options.as_json else out

    def progress(line: str) -> None:
        print(line, file=progress_stream, flush=True)

    from spotkeeper_local.report import DrillError
    from spotkeeper_local.scenario_file import ScenarioFileError, load_all

    try:
        load_all(list(options.scenarios))
    except ScenarioFileError as error:
        print(f"drill: {error}", file=sys.stderr)
        return 2
    try:
        report = run_local(options, progress)
    except DrillError as error:
        print(f"drill: {error} (details: {options.out_dir / 'drill.log'})", file=sys.stderr)
        return 2
    if options.as_json:
        print(report.to_json(), file=out)
    else:
        from spotkeeper_local.report import render_text

        print(render_text(report), file=out)
        print(f"charts, report.json and the functions' logs: {options.out_dir}", file=out)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
