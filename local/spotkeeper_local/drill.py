"""The game day drill (`make demo`): spotkeeper's real handlers against an embedded AWS, on a simulated clock.

    python -m spotkeeper_local.drill [--scenario NAME ...] [--load-seconds N] [--chaos SEED] [--json]
    python -m spotkeeper_local.drill --stack NAME --yes-really-interrupt     # a real game day through AWS FIS

Locally, every scenario deploys the stack from template.yaml into a moto server on loopback, starts one TGI
emulator per instance (on the instance's own private IP), serves the gateway with uvicorn, sends a steady
stream of real requests through it, and plays what AWS would do:

  interruption   a Spot interruption warning for the serving instance; Spot reclaims it two minutes later
  rebalance      a rebalance recommendation first, the warning later: the replacement is ready in time
  capacity       Spot capacity runs out (the serving instance is interrupted, Spot launches fail): fallback to
                 On-Demand; Spot comes back: fall-forward through a launch-before-terminate instance refresh
  baseline       the interruption again with spotkeeper's reactions off (the plain group, the EIP set by hand),
                 measured by a client of the Elastic IP

Every instance (the stack's first one too) takes the modelled launch-to-ready of the template's default model on
its default instance type (``launch_time``: boot, image, weights, load and warm-up; about 7.7 minutes for the
8B model on a g5.2xlarge at gp3's default throughput); ``--load-seconds`` overrides it. ``--chaos SEED`` delivers
every event as EventBridge may: one to three times, out of order, late, and now and then not at all (lifecycle
events, which Auto Scaling delivers best effort).

It prints the launch-to-ready breakdown, a timeline per scenario (simulated seconds, what happened, what
spotkeeper did), checks, and a summary table; ``--json`` prints the same as one JSON object. Charts and logs go
to build/drill/.

Hedged replicas (``--replicas N``, default 2 for these; not part of ``all``, which stays the single instance):

  replica-interruption   N replicas, a warning with no lead for one that does not hold the EIP
  primary-interruption   the same for the one that holds the EIP

``--clients K``: K concurrent clients through the gateway (and, in the hedged scenarios, K of the Elastic IP).
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
SCENARIOS = ("interruption", "rebalance", "capacity", "baseline")
SCENARIO_NUMBERS = {str(index): name for index, name in enumerate(SCENARIOS, start=1)}
HEDGED_SCENARIOS = ("replica-interruption", "primary-interruption")  # drill_hedged
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


@dataclass(frozen=True)
class DrillOptions:
    scenarios: tuple[str, ...]
    # Every instance's launch-to-ready (the stack's first one too): the model's total unless --load-seconds.
    load_seconds: float = field(default_factory=_modelled_seconds)
    request_interval: float = 2.0
    out_dir: Path = OUT_DIR
    as_json: bool = False
    charts: bool = True
    serial_delivery: bool = False
    chaos: int | None = None  # the seed of the event delivery's chaos; None: every event once, in order, at once
    fast_start: str = "off"  # the launch-to-ready model's options: off, s3-nvme or baked
    load_source: str = "model"  # "model" or "--load-seconds"
    replicas: int | None = None  # the template's Replicas (None: the scenario's own, 1 or 2)
    clients: int = 1
    hedged_load_seconds: float | None = None  # given with --load-seconds; else the launch-to-ready model's


def _scenario_name(value: str) -> str:
    name = SCENARIO_NUMBERS.get(value, value)
    if name not in SCENARIOS and name not in HEDGED_SCENARIOS and name != "all":
        choices = ", ".join(SCENARIOS + HEDGED_SCENARIOS)
        raise argparse.ArgumentTypeError(f"unknown scenario {value!r}: choose from {choices}, 1-4 or all")
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
        help=f"one of {', '.join(SCENARIOS)} (or 1-4, or all); repeat for several. Default: all",
    )
    p.add_argument(
        "--load-seconds",
        type=_seconds(0, max_load_seconds()),
        default=None,
        help="simulated seconds from an instance's launch until its TGI is ready (default: the launch-to-ready "
        f"model for the template's defaults, {_modelled_seconds():g} s; at most the launch deadline less a minute)",
    )
    p.add_argument(
        "--fast-start",
        choices=FAST_START,
        default="off",
        help="the fast-start options the launch-to-ready model plays (issue 13): off (default: Hub weights, ghcr "
        "image, gp3 default), s3-nvme (weights from the stack's S3 copy onto local NVMe, image through ECR), "
        "baked (that plus an AMI with the image baked in)",
    )
    p.add_argument(
        "--replicas",
        type=_count(1, MAX_REPLICAS),
        help="the template's Replicas parameter: serving replicas (the hedged scenarios: default 2, at least 2; "
        "the single-instance scenarios: 1 only)",
    )
    p.add_argument(
        "--clients",
        type=_count(1, MAX_CLIENTS),
        default=1,
        help="concurrent clients through the gateway, and of the Elastic IP in the hedged scenarios (default 1)",
    )
    p.add_argument(
        "--request-interval",
        type=_seconds(0.5, 30),
        default=2.0,
        help="simulated seconds between two client requests (default 2)",
    )
    p.add_argument(
        "--chaos",
        type=_seed,
        metavar="SEED",
        help="deliver every event one to three times, out of order, up to two minutes late, and lose a lifecycle "
        "event now and then (EventBridge's at-least-once, best-effort delivery), reproducibly from SEED",
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
    chosen = args.scenario or ["all"]
    names = tuple(dict.fromkeys(n for c in chosen for n in (SCENARIOS if c == "all" else (c,))))
    single = [n for n in names if n not in HEDGED_SCENARIOS]
    if args.replicas is not None and args.replicas > 1 and single:
        parser().error(f"--replicas {args.replicas}: {', '.join(single)} play(s) the single instance (N = 1)")
    if args.replicas == 1 and len(single) < len(names):
        parser().error("the hedged scenarios need --replicas 2 or more")
    modelled = args.load_seconds is None
    if not modelled and args.fast_start != "off":
        parser().error("--fast-start picks the launch-to-ready model's options; --load-seconds replaces the model")
    load_seconds = _modelled_seconds(args.fast_start) if modelled else args.load_seconds
    return DrillOptions(
        scenarios=tuple(names),
        load_seconds=load_seconds,
        replicas=args.replicas,
        clients=args.clients,
        hedged_load_seconds=load_seconds,
        request_interval=args.request_interval,
        out_dir=args.out,
        as_json=args.json,
        charts=not args.no_charts,
        serial_delivery=args.serial_delivery,
        chaos=args.chaos,
        load_source="model" if modelled else "--load-seconds",
        fast_start=args.fast_start,
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
        from spotkeeper_local import drill_hedged
        from spotkeeper_local.drill_scenarios import play
        from spotkeeper_local.embedded_aws import EmbeddedAws, load_sam_template, local_template
        from spotkeeper_local.report import DrillReport, write_chart

        template = local_template(load_sam_template())
        results = []
        with EmbeddedAws() as aws:
            parameters = {
                "TgiPort": str(_free_port()),
                "BackendCacheSeconds": "0",
                "MinOnDemandSeconds": str(MIN_ON_DEMAND_SECONDS),
            }
            for index, name in enumerate(options.scenarios, start=1):
                progress(f"[{index}/{len(options.scenarios)}] {name} ...")
                hedged = name in HEDGED_SCENARIOS
                result = (drill_hedged.play if hedged else play)(
                    name, aws, template, parameters, options, options.load_seconds
                )
                if options.charts:
                    result.chart = str(write_chart(result, options.out_dir))
                results.append(result)
        report = DrillReport(options.load_seconds, options.request_interval, results)
        report.launch_to_ready = launch_to_ready_report(options)
        report.chaos = options.chaos
        report.notes.append(
            f"every instance takes {options.load_seconds:g} s from launch to TGI ready, the stack's first one (before "
            "t=0, a first deploy) too: "
            + (
                "the launch-to-ready model's total (see the breakdown)"
                if options.load_source == "model"
                else "--load-seconds"
            )
        )
        if options.chaos is not None:
            report.notes.append(
                f"--chaos {options.chaos}: every event delivered one to three times, out of order, "
                "up to two minutes late; lifecycle events lost now and then (see each scenario's deliveries)"
            )
        hedged_results = [r for r in results if r.key in HEDGED_SCENARIOS]
        if hedged_results:
            facts = hedged_results[0].facts
            report.notes.append(
                f"hedged replicas ({', '.join(r.key for r in hedged_results)}): Replicas={facts.get('replicas')}, "
                f"{options.clients} client(s) through the gateway and as many of the Elastic IP"
            )
        report.notes.append(
            "from template.yaml, not deployed into moto but played locally: " + ", ".join(sorted(template.left_out))
        )
    report.wall_seconds = time.monotonic() - started
    (options.out_dir / "report.json").write_text(report.to_json())
    log.close()
    return report


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
