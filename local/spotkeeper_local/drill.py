"""The game day drill (`make demo`): spotkeeper's real handlers against an embedded AWS, on a simulated clock.

    python -m spotkeeper_local.drill [--scenario NAME ...] [--scenario-file FILE ...] [--load-seconds N] [--chaos SEED]
    python -m spotkeeper_local.drill --stack NAME --yes-really-interrupt     # a real game day through AWS FIS

Locally, every scenario deploys the stack from template.yaml into a moto server on loopback, starts one TGI
emulator per instance (on the instance's own private IP), serves the gateway with uvicorn, sends a steady
stream of real requests through it, and plays what a scenario file says AWS (and ops) do: a timeline of
actions at simulated times, then the file's expectations as checks (format: ``scenario_file``; engine:
``drill_scenarios``). The files of the top-level ``scenarios/`` folder are chosen by name, e.g.:

  interruption   a Spot interruption warning for the serving instance; Spot reclaims it two minutes later
  rebalance      a rebalance recommendation first, the warning later: the replacement is ready in time
  capacity       Spot capacity runs out (the serving instance is interrupted, Spot launches fail): fallback to
                 On-Demand; Spot comes back: fall-forward, the group replaces the On-Demand instance before it goes
  baseline       the interruption again with spotkeeper's reactions off (the plain group, the EIP set by hand),
                 measured by a client of the Elastic IP
  replica-interruption / primary-interruption
                 hedged replicas (N = 2): a warning with no lead for a replica / for the one holding the EIP

and any other file with ``--scenario-file``. Without either, the first four (``DEMO_SCENARIOS``); ``--scenario all``
plays every file of the folder. Every file is validated before anything plays: a malformed one is an
error naming the file, the line and the field.

Every instance (the stack's first one too) takes the modelled launch-to-ready of the template's default model on
its default instance type (``launch_time``: boot, image, weights, load and warm-up; about 7.5 minutes for the
7B model on a g5.2xlarge at gp3's default throughput) unless the file's setup says otherwise; ``--load-seconds`` and
``--fast-start`` override every file's. ``--chaos SEED`` delivers every event as EventBridge may: one to three
times, out of order, late, and now and then not at all (lifecycle events, which Auto Scaling delivers best
effort). ``--replicas N`` sets the replicas of the files about hedged replicas; ``--clients K`` every file's
concurrent clients (per address).

It prints the launch-to-ready breakdown, a timeline per scenario (simulated seconds, what happened, what
spotkeeper did), checks, and a summary table; ``--json`` prints the same as one JSON object. Charts and logs go
to build/drill/.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "build" / "drill"
SCENARIOS_DIR = ROOT / "scenarios"
SCENARIOS = ("interruption", "rebalance", "capacity", "baseline")  # the first four files, chosen by number too
SCENARIO_NUMBERS = {str(index): name for index, name in enumerate(SCENARIOS, start=1)}
# What `make demo` plays without --scenario / --scenario-file: the four, about two minutes of wall time. Every file
# of scenarios/ (`--scenario all`) takes several times as long (a hung TGI's requests wait out their timeout in
# real time, throttled AWS calls botocore's real back-off); make test plays them all.
DEMO_SCENARIOS = SCENARIOS
HEDGED_SCENARIOS = ("replica-interruption", "primary-interruption")  # files with setup.replicas: 2
MAX_REPLICAS = 8  # the template's Replicas AllowedValues
MAX_CLIENTS = 32
MIN_ON_DEMAND_SECONDS = 300  # the stack parameter for the drill (default 1800): the outage scenario stays short
# A launch is ABANDONed at LaunchDeadlineSeconds (the template's default, 1800 s); the probe, which finishes a launch
# whose event was lost, looks once a minute: a load time the drill plays must leave it that minute.
PROBE_PERIOD_SECONDS = 60.0


def max_load_seconds() -> float:
    from spotkeeper_local.launch_time import template_launch_deadline

    return template_launch_deadline() - PROBE_PERIOD_SECONDS


# --fast-start: the user data's options (issue 13) the launch-to-ready model plays. "off" is the template's default
# (weights from the Hub, the image from ghcr.io, /data on gp3 at its default throughput).
FAST_START = ("off", "s3-nvme", "baked")


def _fast_start_options(fast_start: str) -> Any:
    from spotkeeper_local.launch_time import LaunchOptions

    return {
        "off": LaunchOptions(),
        "s3-nvme": LaunchOptions(weights="s3", data_on_nvme=True, image="ecr"),  # ModelRevision + EcrCachePrefix
        "baked": LaunchOptions(weights="s3", data_on_nvme=True, image="baked"),  # and a baked AmiSsmParameter
    }[fast_start]


def modelled_launch(fast_start: str = "off") -> Any:
    """The launch-to-ready breakdown of the template's default model on its default instance type."""
    from spotkeeper_local.launch_time import launch_to_ready

    return launch_to_ready(options=_fast_start_options(fast_start))


def _modelled_seconds(fast_start: str = "off") -> float:
    return round(modelled_launch(fast_start).total)


def modelled_seconds(fast_start: str = "off") -> float:
    """The launch-to-ready model's total for the template's defaults, in whole seconds (what the drill plays)."""
    return _modelled_seconds(fast_start)


@dataclass(frozen=True)
class DrillOptions:
    scenarios: tuple[Path, ...]  # scenario files, played in this order
    # The model's total unless --load-seconds; it replaces every file's setup only when given (load_source) or
    # with --fast-start.
    load_seconds: float = field(default_factory=_modelled_seconds)
    request_interval: float | None = None  # None: each file's clients say
    out_dir: Path = OUT_DIR
    as_json: bool = False
    charts: bool = True
    serial_delivery: bool = False
    chaos: int | None = None  # the seed of the event delivery's chaos; None: each file's setup (default: none)
    fast_start: str = "off"  # the launch-to-ready model's options: off, s3-nvme or baked
    load_source: str = "model"  # "model" or "--load-seconds"
    replicas: int | None = None  # the template's Replicas for files of hedged replicas (None: each file's)
    clients: int | None = None  # concurrent clients per address (None: each file's)


def scenario_names() -> list[str]:
    from spotkeeper_local.scenario_file import folder

    return [p.stem for p in folder(SCENARIOS_DIR)]


def _scenario_name(value: str) -> str:
    name = SCENARIO_NUMBERS.get(value, value)
    if name != "all" and name not in scenario_names():
        raise argparse.ArgumentTypeError(
            f"unknown scenario {value!r}: choose from {', '.join(scenario_names())}, 1-4 or all"
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


def _seed(value: str) -> int:
    try:
        seed = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer seed") from None
    if not 0 <= seed < 2**32:
        raise argparse.ArgumentTypeError(f"seed {seed} is outside 0-{2**32 - 1}")
    return seed


def _count(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            count = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if not low <= count <= high:
            raise argparse.ArgumentTypeError(f"{count} is outside {low}-{high}")
        return count

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
        help="a file of scenarios/ by name (e.g. interruption; 1-4 for the first four, all for every file); "
        f"repeatable. Default, without --scenario-file: {', '.join(DEMO_SCENARIOS)}",
    )
    p.add_argument(
        "--scenario-file",
        action="append",
        type=Path,
        metavar="FILE",
        help="a scenario file (YAML or JSON; see scenarios/schema.json and the README); repeatable",
    )
    p.add_argument(
        "--load-seconds",
        type=_seconds(0, max_load_seconds()),
        default=None,
        help="simulated seconds from an instance's launch until its TGI is ready, for every scenario (default: each "
        f"file's setup, by default the launch-to-ready model for the template's defaults, {_modelled_seconds():g} s; "
        "at most the launch deadline less a minute)",
    )
    p.add_argument(
        "--fast-start",
        choices=FAST_START,
        default="off",
        help="the fast-start options the launch-to-ready model plays for every scenario (issue 13): off (default: "
        "each file's; Hub weights, ghcr "
        "image, gp3 default), s3-nvme (weights from the stack's S3 copy onto local NVMe, image through ECR), "
        "baked (that plus an AMI with the image baked in)",
    )
    p.add_argument(
        "--replicas",
        type=_count(1, MAX_REPLICAS),
        help="the template's Replicas parameter for the files of hedged replicas (setup.replicas >= 2; default: "
        "each file's); the single-instance files play N = 1 only",
    )
    p.add_argument(
        "--clients",
        type=_count(1, MAX_CLIENTS),
        default=None,
        help="concurrent clients per address (the gateway, and the Elastic IP where a file has both) for every "
        "scenario (default: each file's, 1 unless it says)",
    )
    p.add_argument(
        "--request-interval",
        type=_seconds(0.5, 30),
        default=None,
        help="simulated seconds between two requests of a client, for every scenario (default: each file's, 2)",
    )
    p.add_argument(
        "--chaos",
        type=_seed,
        metavar="SEED",
        help="deliver every event one to three times, out of order, up to two minutes late, and lose a lifecycle "
        "event now and then (EventBridge's at-least-once, best-effort delivery), reproducibly from SEED, in every "
        "scenario (default: each file's setup.chaos, none unless it says)",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--out", type=Path, default=OUT_DIR, help="where charts, the JSON report and logs go")
    p.add_argument("--no-charts", action="store_true", help="do not draw the availability charts")
    p.add_argument(
        "--serial-delivery",
        action="store_true",
        help="one execution per function (a reserved concurrency of 1): an event for a busy function is throttled "
        "and retried as Lambda's asynchronous queue does",
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
    chosen = args.scenario or ([] if files else list(DEMO_SCENARIOS))
    named = [SCENARIOS_DIR / f"{name}.yaml" for name in dict.fromkeys(chosen) if name != "all"]
    if "all" in chosen:
        named = [*folder(SCENARIOS_DIR), *named]
    modelled = args.load_seconds is None
    if not modelled and args.fast_start != "off":
        parser().error("--fast-start picks the launch-to-ready model's options; --load-seconds replaces the model")
    return DrillOptions(
        scenarios=tuple(dict.fromkeys([*named, *files])),
        load_seconds=_modelled_seconds(args.fast_start) if modelled else args.load_seconds,
        replicas=args.replicas,
        clients=args.clients,
        request_interval=args.request_interval,
        out_dir=args.out,
        as_json=args.json,
        charts=not args.no_charts,
        serial_delivery=args.serial_delivery,
        chaos=args.chaos,
        load_source="model" if modelled else "--load-seconds",
        fast_start=args.fast_start,
    )


def replicas_refused(options: DrillOptions, scenarios: list[Any]) -> str | None:
    """Why --replicas does not fit the chosen files, if it does not: it sets the files about hedged replicas."""
    if options.replicas is None:
        return None
    single = [s.name for s in scenarios if s.setup.replicas == 1]
    if options.replicas > 1 and single:
        return f"--replicas {options.replicas}: {', '.join(single)} play(s) the single instance (N = 1)"
    if options.replicas == 1 and len(single) < len(scenarios):
        return "the hedged scenarios need --replicas 2 or more"
    return None


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
        from spotkeeper_local.drill_scenarios import chaos_of, load_seconds_of, play, replicas_of
        from spotkeeper_local.embedded_aws import EmbeddedAws, load_sam_template, local_template
        from spotkeeper_local.report import DrillReport, write_chart
        from spotkeeper_local.scenario_file import load_all

        scenarios = load_all(list(options.scenarios))  # every file valid before anything plays
        template = local_template(load_sam_template())
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
                began = time.monotonic()
                result = play(scenario, aws, template, parameters, options)
                result.facts["wall_seconds"] = round(time.monotonic() - began, 1)
                if options.charts:
                    result.chart = str(write_chart(result, options.out_dir))
                results.append(result)
        loads = sorted({load_seconds_of(s.setup, options) for s in scenarios})
        intervals = sorted({options.request_interval or s.setup.clients.interval for s in scenarios})
        report = DrillReport(_one_or_all(loads), _one_or_all(intervals), results)
        report.launch_to_ready = launch_to_ready_report(options)
        chaos = sorted({c for s in scenarios if (c := chaos_of(s.setup, options)) is not None})
        report.chaos = options.chaos if options.chaos is not None else (chaos[0] if len(chaos) == 1 else None)
        modelled = options.load_source == "model" and options.fast_start == "off"
        report.notes.append(
            f"every instance takes {' or '.join(f'{x:g}' for x in loads)} s from launch to TGI ready, the stack's "
            "first one (before t=0, a first deploy) too: "
            + (
                "the launch-to-ready model's total (see the breakdown) unless a file's setup says load_seconds"
                if modelled
                else ("--load-seconds" if options.load_source != "model" else f"--fast-start {options.fast_start}")
            )
        )
        if chaos:
            report.notes.append(
                f"--chaos {' or '.join(map(str, chaos))}: every event delivered one to three times, out of order, "
                "up to two minutes late; lifecycle events lost now and then (see each scenario's deliveries)"
            )
        hedged_results = [(s, r) for s, r in zip(scenarios, results, strict=True) if s.setup.replicas > 1]
        if hedged_results:
            names = ", ".join(r.key for _, r in hedged_results)
            replicas = sorted({replicas_of(s.setup, options) for s, _ in hedged_results})
            clients = sorted({r.facts.get("clients_per_address", 1) for _, r in hedged_results})
            report.notes.append(
                f"hedged replicas ({names}): Replicas={' or '.join(map(str, replicas))}, "
                f"{' or '.join(map(str, clients))} client(s) through the gateway and as many of the Elastic IP"
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


def launch_to_ready_report(options: DrillOptions) -> dict[str, Any]:
    """What the drill's launch-to-ready is and where it comes from: the model's breakdown, or --load-seconds."""
    breakdown = modelled_launch(options.fast_start)
    modelled = breakdown.as_json()
    if options.load_source == "model":
        return {"source": "model", "fast_start": options.fast_start, "seconds": options.load_seconds, **modelled}
    return {
        "source": "--load-seconds",
        "seconds": options.load_seconds,
        "model_total_seconds": modelled["total_seconds"],
        "model": modelled["model"],
        "instance_type": modelled["instance_type"],
    }


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
        refused = replicas_refused(options, load_all(list(options.scenarios)))
    except ScenarioFileError as error:
        print(f"drill: {error}", file=sys.stderr)
        return 2
    if refused:
        parser().error(refused)
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
