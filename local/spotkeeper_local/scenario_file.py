"""Game days as files: the format of a drill scenario (YAML or JSON), read and validated before anything plays.

A scenario names its setup (model load, clients, capacity), a timeline of actions at simulated seconds after
t = 0 (the moment the first instance serves and the clients start), how long to play, and what the report must
show. Instances are addressed by role, resolved when the action plays (or, for expectations, at the end):

* ``serving``: the state table's serving instance; ``original``: the instance serving at t = 0;
* ``replacement``: the earliest instance launched after t = 0 that still runs; ``newest``: the latest launched
  instance that still runs;
* ``any-spot`` / ``on-demand``: a running group member bought as Spot / On-Demand (the oldest).

A role that names no instance when its action plays is an error of the drill (DrillError), never skipped.

    python -m spotkeeper_local.scenario_file --schema      # the JSON Schema (scenarios/schema.json)
    python -m spotkeeper_local.scenario_file FILE ...       # validate files, play nothing

A malformed file raises ``ScenarioFileError`` naming the file, the line and the field; nothing plays.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS_DIR = ROOT / "scenarios"
SCHEMA_PATH = SCENARIOS_DIR / "schema.json"
MAX_SECONDS = 7200.0

Role = Literal["serving", "original", "replacement", "newest", "any-spot", "on-demand"]
EipPlace = Literal["serving", "original", "replacement", "newest", "any-spot", "on-demand", "nothing"]
Service = Literal["autoscaling", "ec2", "dynamodb", "sns"]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]
# Short names of the events EventBridge delivers to spotkeeper (the drill's own, as in its timeline).
EventKind = Literal[
    "interruption warning",
    "rebalance",
    "launch hook",
    "terminate hook",
    "launch unsuccessful",
    "schedule",
    "any",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- setup ---------------------------------------------------------------------------------------------
class Clients(_Strict):
    via: Literal["gateway", "elastic-ip"] = Field("gateway", description="what the clients send their requests to")
    interval: float = Field(2.0, ge=0.5, le=30, description="simulated seconds between two requests")
    timeout: float = Field(
        10.0,
        gt=0,
        le=60,
        description="wall seconds a client waits for an answer: a hung TGI costs this much real time a request",
    )


class CapacityRule(_Strict):
    """Spot capacity for some instance types and/or zones (none named: every type, every zone)."""

    instance_types: list[str] | None = Field(None, min_length=1)
    zones: list[str] | None = Field(None, min_length=1)
    spot: bool = Field(description="whether EC2 has Spot capacity there")


class Setup(_Strict):
    load_seconds: float | None = Field(
        None, ge=0, le=1500, description="simulated seconds a launched instance takes from launch to TGI ready"
    )
    launch_model: Literal["default"] | None = Field(
        None, description="'default': the launch-to-ready model (launch_time.py) for the template's defaults"
    )
    spotkeeper: bool = Field(True, description="false: the plain group with its EIP set by hand (a baseline)")
    clients: Clients = Clients()
    replicas: int = Field(1, description="serving instances; only 1 until hedged replicas exist")
    capacity: list[CapacityRule] = Field(default_factory=list, description="Spot capacity at the start")

    @model_validator(mode="after")
    def _one_load(self) -> Setup:
        if (self.load_seconds is None) == (self.launch_model is None):
            raise ValueError("name exactly one of load_seconds (a number) or launch_model: default")
        if self.replicas != 1:
            raise ValueError("replicas: only 1 is supported until hedged replicas exist")
        return self


# -- timeline ------------------------------------------------------------------------------------------
class _Action(_Strict):
    at: Seconds = Field(description="simulated seconds after t = 0 (or after `when` first holds)")
    when: Literal["replacement-launched", "on-demand-serves"] | None = Field(
        None, description="count `at` from the first second this holds instead of from t = 0"
    )


class _Targeted(_Action):
    target: Role


class InterruptionWarning(_Targeted):
    do: Literal["spot-interruption-warning"]


class RebalanceRecommendation(_Targeted):
    do: Literal["rebalance-recommendation"]


class Reclaim(_Targeted):
    do: Literal["reclaim"]


class SpotCapacity(_Action):
    do: Literal["spot-capacity-lost", "spot-capacity-back"]
    instance_types: list[str] | None = Field(None, min_length=1)
    zones: list[str] | None = Field(None, min_length=1)


class ZoneOutage(_Action):
    do: Literal["zone-outage"]
    zone: str | None = Field(None, description="default: the zone of the group's subnet")


class TgiFault(_Targeted):
    do: Literal["tgi-crash", "tgi-hang", "tgi-unhealthy"]


class EipMove(_Action):
    do: Literal["eip-move"]
    to: Role


class EipDisassociate(_Action):
    do: Literal["eip-disassociate"]


class TerminateByHand(_Targeted):
    do: Literal["terminate-instance"]


class LambdaThrottle(_Action):
    do: Literal["lambda-throttle"]
    seconds: Annotated[float, Field(gt=0, le=MAX_SECONDS)]


class AwsFaults(_Action):
    do: Literal["aws-throttling", "aws-5xx"]
    service: Service
    seconds: Annotated[float, Field(gt=0, le=MAX_SECONDS)]
    failures_per_call: int = Field(2, ge=1, le=20, description="attempts of each call that fail (botocore retries)")


class EventChaos(_Action):
    do: Literal["events-duplicate", "events-delay", "events-loss"]
    event: EventKind
    count: int = Field(1, ge=1, le=100, description="how many of the next such events")
    seconds: float = Field(0, ge=0, le=MAX_SECONDS, description="delay (events-delay; duplicate's second copy)")


Action = Annotated[
    InterruptionWarning
    | RebalanceRecommendation
    | Reclaim
    | SpotCapacity
    | ZoneOutage
    | TgiFault
    | EipMove
    | EipDisassociate
    | TerminateByHand
    | LambdaThrottle
    | AwsFaults
    | EventChaos,
    Field(discriminator="do"),
]


class Run(_Strict):
    """How long to play: ``seconds`` after t = 0, or ``until`` a state holds (at most ``limit``) then ``settle``."""

    seconds: Seconds | None = None
    until: Literal["back-on-spot", "on-demand-serves"] | None = None
    limit: Seconds = 2400.0
    settle: Seconds = 0.0

    @model_validator(mode="after")
    def _one(self) -> Run:
        if (self.seconds is None) == (self.until is None):
            raise ValueError("name exactly one of seconds or until")
        return self


# -- expectations --------------------------------------------------------------------------------------
class Bound(_Strict):
    max: float = Field(ge=0)
    min: float = Field(0, ge=0)


class Alerts(_Strict):
    must: list[str] = Field(default_factory=list)
    must_not: list[str] = Field(default_factory=list)


class Expect(_Strict):
    longest_no_success_seconds: Bound = Field(description="the clients' longest window without a success")
    failed_requests: Bound | None = None
    recovered: bool | None = Field(None, description="a request succeeded after the longest window")
    capacity_mode: Literal["spot", "on-demand"] | None = Field(None, description="the state table's mode at the end")
    modes_seen: list[Literal["spot", "on-demand"]] = Field(default_factory=list)
    desired_capacity: int | None = Field(None, ge=0)
    group_size: int | None = Field(None, ge=0, description="group members at the end")
    serving_purchase: Literal["spot", "on-demand"] | None = None
    eip_on: EipPlace | None = Field(None, description="the role the EIP ends on")
    eip_not_on: EipPlace | None = None
    alerts: Alerts = Alerts()
    alarms: Alerts = Field(Alerts(), description="CloudWatch alarms (by name) that must / must not go to ALARM")
    aws_faults_injected: Bound | None = Field(None, description="AWS calls the scenario's fault windows failed")
    handlers_succeed: bool = Field(True, description="every handler invocation succeeded within its timeout")
    no_stray_instances: bool = Field(True, description="no running instance left outside the group")


class Scenario(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    title: str
    story: str = ""
    setup: Setup
    timeline: list[Action] = Field(default_factory=list)
    run: Run
    expect: Expect


# -- reading -------------------------------------------------------------------------------------------
class ScenarioFileError(ValueError):
    """A scenario file that cannot be played; the message names the file, the line and the field."""


def _lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _lines(value, (*path, key.value), out)
            out[(*path, key.value)] = key.start_mark.line + 1  # the key's line, not its value's
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _lines(item, (*path, index), out)


def _line_of(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    # pydantic's location holds the union member's tag ('spot-capacity-lost') after a list index: not a key
    path = tuple(str(part) if not isinstance(part, int) else part for part in loc)
    while path:
        keys = [k for k in lines if _matches(k, path)]
        if keys:
            return lines[keys[0]]
        path = path[:-1]
    return lines.get(())


def _matches(key: tuple[Any, ...], path: tuple[Any, ...]) -> bool:
    if len(key) != len(path):
        return False
    return all(k == p or (isinstance(k, int) and p == str(k)) for k, p in zip(key, path, strict=True))


def _clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """Drop the discriminator tag pydantic inserts after a timeline index."""
    out: list[Any] = []
    node = data
    after_index = False
    for part in loc:
        if isinstance(node, dict):
            if after_index and part not in node and part == node.get("do"):
                after_index = False
                continue  # the union's tag, not a key of the file
            out.append(part)
            node = node.get(part)
            after_index = False
            continue
        after_index = isinstance(part, int)
        out.append(part)
        node = node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None
    return tuple(out)


def parse(text: str, source: str) -> Scenario:
    """The scenario in ``text`` (YAML, of which JSON is a subset), or ScenarioFileError."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "?"
        raise ScenarioFileError(f"{source}: {where}: not YAML/JSON: {getattr(error, 'problem', error)}") from None
    if not isinstance(data, dict) or node is None:
        raise ScenarioFileError(f"{source}: line 1: a scenario is a mapping (name, title, setup, timeline, ...)")
    lines: dict[tuple[Any, ...], int] = {}
    _lines(node, (), lines)
    try:
        return Scenario.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            loc = _clean_loc(tuple(item["loc"]), data)
            if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc = (*loc, "do")  # the action's name is what is wrong (or missing)
            field = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
            line = _line_of(lines, loc)
            problems.append(f"{source}: line {line}: {field or '(top)'}: {item['msg']}")
        raise ScenarioFileError("\n".join(problems)) from None


def load(path: Path) -> Scenario:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ScenarioFileError(f"{path}: cannot read: {error.strerror}") from None
    return parse(text, str(path))


def load_all(paths: list[Path]) -> list[Scenario]:
    """Every file, each validated before any plays; names must be unique (they key the report)."""
    scenarios = [load(p) for p in paths]
    names = [s.name for s in scenarios]
    for name in names:
        if names.count(name) > 1:
            raise ScenarioFileError(f"two scenario files are both named {name!r}: names key the report")
    return scenarios


def folder(directory: Path = SCENARIOS_DIR) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml", ".json") and p.name != "schema.json")


def schema() -> dict[str, Any]:
    return Scenario.model_json_schema()


def schema_text() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--schema"]:
        sys.stdout.write(schema_text())
        return 0
    try:
        for scenario in load_all([Path(a) for a in args] or folder()):
            print(f"{scenario.name}: ok ({len(scenario.timeline)} actions)")
    except ScenarioFileError as error:
        print(error, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
