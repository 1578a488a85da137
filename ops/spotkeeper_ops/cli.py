"""``spotkeeper preflight | status | keys`` (``python -m spotkeeper_ops``, or ``make preflight`` / ``make status``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(prog="spotkeeper", description="spotkeeper operator commands")
    commands = parser.add_subparsers(dest="command", required=True)

    preflight = commands.add_parser("preflight", help="check an account and region before `sam deploy`")
    preflight.add_argument("--config-env", help="a samconfig.toml environment (its parameter_overrides and region)")
    preflight.add_argument("--parameter-overrides", nargs="*", default=[], metavar="Key=Value")
    preflight.add_argument("--region", help="defaults to the samconfig's, then your AWS configuration's")
    preflight.add_argument("--template", type=Path, default=ROOT / "template.yaml")
    preflight.add_argument("--samconfig", type=Path, default=None)

    status = commands.add_parser("status", help="a deployed stack at a glance")
    status.add_argument("--stack", required=True)
    status.add_argument("--region")
    status.add_argument("--watch", action="store_true", help="refresh until interrupted")
    status.add_argument("--interval", type=float, default=10.0)

    commands.add_parser("keys", help="gateway API keys (spotkeeper keys --help)", add_help=False)

    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["keys"]:
        from spotkeeper_ops.keys import main as keys_main

        return keys_main(argv[1:], out=out, err=err)
    args = parser.parse_args(argv)

    import boto3

    if args.command == "preflight":
        from spotkeeper_ops.params import parse_overrides, resolve_deploy
        from spotkeeper_ops.preflight import Clients, report, run_preflight

        try:
            deploy = resolve_deploy(
                args.template, args.samconfig, args.config_env, parse_overrides(args.parameter_overrides), args.region
            )
        except ValueError as error:
            print(f"error: {error}", file=err)
            return 2
        session = boto3.session.Session(region_name=deploy.region or args.region)
        text, code = report(run_preflight(deploy, Clients.from_session(session), session.region_name))
        print(text, file=out)
        return code

    from spotkeeper_ops.status import StackClients, run_status

    session = boto3.session.Session(region_name=args.region)
    try:
        return run_status(
            args.stack,
            StackClients.from_session(session),
            lambda text: print(text, file=out, flush=True),
            watch=args.watch,
            interval=args.interval,
        )
    except KeyboardInterrupt:
        return 0
