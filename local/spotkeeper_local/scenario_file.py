"""Game days as files: the format of a drill scenario (YAML or JSON), read and validated before anything plays.

A scenario names its setup (launch-to-ready, clients, replicas, capacity, delivery chaos), a timeline of actions
at simulated seconds after t = 0 (the moment the first instance serves and the clients start), how long to play,
and what the report must show. Instances are addressed by role, resolved when the action plays (or, for
expectations, at the end):

* ``serving``: the state table's serving instance; ``original``: the instance serving at t = 0;
* ``primary``: the instance the Elastic IP is on; ``secondary``: a ready replica the EIP is not on (N >= 2);
* ``warned``: the instance the latest Spot interruption warning of the timeline was for;
* ``replacement``: the earliest instance launched after t = 0 that still runs; ``newest``: the latest launched
  instance that still runs;
* ``any-spot`` / ``on-demand``: a running group member bought as Spot / On-Demand (the oldest).

A role that names no instance when its action plays is an error of the drill (DrillError), never skipped.

Times (an action's ``at``, the run's ``seconds``, ``limit``, ``settle``) are seconds, or an expression of
``load`` (the scenario's launch-to-ready, seconds): ``load + 90``, ``30 + max(load, 120) + 90``. A bound of an
expectation may also use ``chaos``: what the drill's delivery chaos cost the failover (0 without ``--chaos``).

    python -m spotkeeper_local.scenario_file --schema      # the JSON Schema (scenarios/schema.json)
    python -m spotkeeper_local.scenario_file FILE ...       # validate files, play nothing

A malformed file raises ``ScenarioFileError`` naming the file, the line and the field; nothing plays.
"""

from __future__ import annotations

import ast
import json
import operator
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS_DIR = ROOT / "scenarios"
SCHEMA_PATH = SCENARIOS_DIR / "schema.json"
MAX_SECONDS = 7200.0
MAX_REPLICAS = 8  # the template's Replicas AllowedValues
MAX_CLIENTS = 32
MAX_ZONES = 4  # the embedded AWS's fleet subnets (embedded_aws.MAX_ZONES)

Role = Literal[
    "serving", "original", "primary", "secondary", "warned", "replacement", "newest", "any-spot", "on-demand"
]
EipPlace = Literal[
    "serving",
    "original",
    "primary",
    "secondary",
    "warned",
    "replacement",
    "newest",
    "any-spot",
    "on-demand",
    "nothing",
]
Service = Literal["autoscaling", "ec2", "dynamodb", "sns"]
# States the engine can wait for (an action's `when`, the run's `until`, an expectation's `served_throughout_after`)
Condition = Literal["replacement-launched", "replacement-ready", "replacement-serves", "on-demand-serves"]
RunUntil = Literal["replacement-serves", "replacement-ready", "on-demand-serves", "back-on-spot"]
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


# -- times: seconds, or an expression of the launch-to-ready --------------------------------------------------
_OPERATORS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_FUNCTIONS: dict[str, Callable[..., float]] = {"max": max, "min": min}


def _compile(text: str, names: frozenset[str]) -> ast.Expression:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"{text!r} is not an expression of {', '.join(sorted(names))}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id not in names and node.id not in _FUNCTIONS:
                raise ValueError(f"{text!r}: unknown name {node.id!r} (known: {', '.join(sorted(names))})")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
                raise ValueError(f"{text!r}: only max(...) and min(...) may be called")
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise ValueError(f"{text!r}: {node.value!r} is not a number")
        elif not isinstance(
            node, ast.Expression | ast.BinOp | ast.UnaryOp | ast.USub | ast.UAdd | ast.Load | ast.operator
        ) or (isinstance(node, ast.operator) and type(node) not in _OPERATORS):
            raise ValueError(f"{text!r}: only numbers, {', '.join(sorted(names))}, + - * /, max() and min()")
    return tree


def evaluate(value: float | str, **names: float) -> float:
    """A time or bound of a scenario file, in seconds, with ``load`` (and ``chaos``) given."""
    if not isinstance(value, str):
        return float(value)

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            return float(names[node.id])
        if isinstance(node, ast.UnaryOp):
            inner = walk(node.operand)
            return -inner if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.BinOp):
            return _OPERATORS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return _FUNCTIONS[node.func.id](*(walk(a) for a in node.args))
        raise ValueError(f"cannot evaluate {value!r}")

    return walk(_compile(value, frozenset(names)))


def _seconds_or_expression(
    names: frozenset[str], what: str, maximum: float | None = MAX_SECONDS
) -> Callable[[Any], float | str]:
    def check(value: Any) -> float | str:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"{what}: seconds (a number) or an expression of {', '.join(sorted(names))}")
        if isinstance(value, str):
            _compile(value, names)
            return value.strip()
        if value < 0:
            raise ValueError(f"{value:g} is negative")
        if maximum is not None and value > maximum:
            raise ValueError(f"{value:g} is outside 0-{maximum:g} seconds")
        return float(value)

    return check


_TIME_NAMES = frozenset({"load"})
_BOUND_NAMES = frozenset({"load", "chaos"})
Time = Annotated[
    float | str,
    BeforeValidator(_seconds_or_expression(_TIME_NAMES, "a time")),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": MAX_SECONDS},
                {"type": "string", "description": "an expression of load: numbers, load, + - * /, max(), min()"},
            ]
        }
    ),
]
BoundValue = Annotated[
    float | str,
    BeforeValidator(_seconds_or_expression(_BOUND_NAMES, "a bound", maximum=None)),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {
                    "type": "string",
                    "description": "an expression of load and chaos: numbers, load, chaos, + - * /, max(), min()",
                },
            ]
        }
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- setup ---------------------------------------------------------------------------------------------
class Clients(_Strict):
    via: Literal["gateway", "elastic-ip", "both"] = Field(
        "gateway",
        description="what the clients send their requests to; both: clients of the gateway (the ones the "
        "expectations name first) and as many of the Elastic IP",
    )
    count: int = Field(1, ge=1, le=MAX_CLIENTS, description="concurrent clients (per address with via: both)")
    interval: float = Field(2.0, ge=0.5, le=30, description="simulated seconds between two requests of a client")
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
        None,
        ge=0,
        le=1740,
        description="simulated seconds every instance takes from launch to TGI ready; default: the launch-to-"
        "ready model's for the template's defaults (launch_time.py), with fast_start's options",
    )
    fast_start: Literal["off", "s3-nvme", "baked"] = Field(
        "off", description="the launch-to-ready model's fast-start options (the drill's --fast-start)"
    )
    spotkeeper: bool = Field(True, description="false: the plain group with its EIP set by hand (a baseline)")
    clients: Clients = Clients()
    replicas: int = Field(1, ge=1, le=MAX_REPLICAS, description="the template's Replicas: serving replicas")
    zones: int = Field(
        1,
        ge=1,
        le=MAX_ZONES,
        description="Availability Zones of the fleet's subnets (us-east-1a, b, ...): the group spreads its instances "
        "over them, and a Spot launch that fails in one zone goes to another",
    )
    chaos: int | None = Field(
        None, ge=0, lt=2**32, description="seed of the event delivery's chaos (the drill's --chaos); none: orderly"
    )
    capacity: list[CapacityRule] = Field(default_factory=list, description="Spot capacity at the start")

    @model_validator(mode="after")
    def _consistent(self) -> Setup:
        if self.load_seconds is not None and self.fast_start != "off":
            raise ValueError("name load_seconds (a fixed time) or fast_start (the model's options), not both")
        if not self.spotkeeper and self.replicas != 1:
            raise ValueError("replicas: the plain group without spotkeeper plays one instance")
        if not self.spotkeeper and self.clients.via != "elastic-ip":
            raise ValueError("clients.via: without spotkeeper there is no gateway: elastic-ip")
        return self


# -- timeline ------------------------------------------------------------------------------------------
class _Action(_Strict):
    at: Time = Field(description="simulated seconds after t = 0 (or after `when` first holds)")
    when: Condition | None = Field(None, description="count `at` from the first second this holds, not from t = 0")


class _Targeted(_Action):
    target: Role
    zone: str | None = Field(
        None, description="only an instance in this Availability Zone (e.g. us-east-1a) takes the role"
    )


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
    """How long to play: ``seconds`` after t = 0, or ``until`` a state holds (at most ``limit`` after t = 0) then
    ``settle``. Under the drill's delivery chaos both last ``CHAOS_ROOM`` seconds longer (drill_scenarios)."""

    seconds: Time | None = None
    until: RunUntil | None = None
    limit: Time = "load + 1800"
    settle: Time = 0.0

    @model_validator(mode="after")
    def _one(self) -> Run:
        if (self.seconds is None) == (self.until is None):
            raise ValueError("name exactly one of seconds or until")
        return self


# -- expectations --------------------------------------------------------------------------------------
class Bound(_Strict):
    max: BoundValue
    min: BoundValue = 0.0


class Alerts(_Strict):
    must: list[str] = Field(default_factory=list)
    must_not: list[str] = Field(default_factory=list)


class Alarms(_Strict):
    """The stack's CloudWatch alarms, by the end of their name (``endpoint-down`` is ``<stack>-endpoint-down``)."""

    must: list[str] = Field(default_factory=list, description="go to ALARM (after t = 0)")
    must_not: list[str] = Field(default_factory=list, description="stay out of ALARM (after t = 0)")
    must_when_outlasted: list[str] = Field(
        default_factory=list,
        description="go to ALARM and alert when the clients' longest outage outlasts the alarm (its datapoints to "
        "alarm x its period, plus two probe periods); a shorter outage may pass unalarmed",
    )


class Expect(_Strict):
    longest_no_success_seconds: Bound = Field(
        description="the clients' longest window without a successful request (the gateway's with via: both)"
    )
    failed_requests: Bound | None = None
    unanswered_requests: Bound | None = Field(
        None,
        description="requests that got no HTTP answer within the clients' timeout (the gateway's with via: both): "
        "during a failover the gateway answers 503 with Retry-After, never hangs",
    )
    eip_longest_no_success_seconds: Bound | None = Field(None, description="the same for clients of the EIP (both)")
    eip_failed_requests: Bound | None = None
    recovered: bool | None = Field(None, description="a request succeeded after the longest window")
    capacity_mode: Literal["spot", "on-demand"] | None = Field(None, description="the state table's mode at the end")
    modes_seen: list[Literal["spot", "on-demand"]] = Field(default_factory=list)
    modes_not_seen: list[Literal["spot", "on-demand"]] = Field(
        default_factory=list, description="modes the state table never took after t = 0 (e.g. no fallback)"
    )
    desired_capacity: int | None = Field(None, ge=0)
    group_size: int | None = Field(None, ge=0, description="group members at the end")
    serving: Role | None = Field(None, description="the role the state table's serving instance ends as")
    serving_purchase: Literal["spot", "on-demand"] | None = None
    eip_on: EipPlace | None = Field(None, description="the role the EIP ends on")
    eip_not_on: EipPlace | None = None
    served_throughout_after: Condition | None = Field(
        None, description="from the first second this held: a ready serving instance every second, no failed request"
    )
    ready_replicas: int | None = Field(
        None, ge=1, description="replicas the ready set names ready at the end; the EIP on one, no warned one among"
    )
    warned_quiet_after_seconds: float | None = Field(
        None, ge=0, le=60, description="no request reaches a warned instance's TGI this long after its warning"
    )
    eip_off_warned_within_seconds: float | None = Field(
        None, ge=0, le=600, description="the EIP leaves a warned instance it was on within this long"
    )
    alerts: Alerts = Alerts()
    alarms: Alarms = Alarms()
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

    @model_validator(mode="after")
    def _fits_setup(self) -> Scenario:
        expect, via = self.expect, self.setup.clients.via
        if (expect.eip_longest_no_success_seconds or expect.eip_failed_requests) and via != "both":
            raise ValueError("expect.eip_*: needs clients of the Elastic IP beside the gateway's (clients.via: both)")
        if expect.ready_replicas is not None and expect.ready_replicas > self.setup.replicas:
            raise ValueError(f"expect.ready_replicas: more than the setup's {self.setup.replicas} replicas")
        return self


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
    """Drop what pydantic inserts that is no key of the file: the union's tag after a timeline index
    ('spot-capacity-lost'), a union member's type ('float', 'str') after a field."""
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
        if not isinstance(node, list) and not isinstance(part, int):
            continue  # below a scalar: a union member's name
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
            problem = f"{source}: line {line}: {field or '(top)'}: {item['msg']}"
            if problem not in problems:
                problems.append(problem)
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
