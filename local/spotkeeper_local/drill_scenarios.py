"""The drill's engine: plays a scenario file (``scenario_file.Scenario``) on one ``DrillWorld`` and checks it.

Times are simulated seconds after the clients start (t = 0), once the first instance serves (with spotkeeper
off: once its TGI is ready and the Elastic IP is associated by hand; with N >= 2 replicas: once the ready set
holds N and the EIP is on one). Every instance, the stack's first one too, takes the scenario's launch-to-ready
(``load``: the launch-to-ready model's for the template's defaults, the file's ``load_seconds``, or the drill's
``--load-seconds`` / ``--fast-start``). Every action of the file's timeline plays at its time on the world's parts
(``market``, ``group``, ``fleet``, the EventBridge bus, the Lambda runtime, the AWS clients); its instance is
resolved by role when it plays, and a role that names no instance then stops the drill with an error
(``ScenarioError``) rather than being skipped. At the end the file's expectations become the scenario's checks,
read from what the world recorded.

With the drill's delivery chaos (``--chaos SEED`` or the file's ``setup.chaos``) every run lasts ``CHAOS_ROOM``
seconds longer, and a bound may add ``chaos``: what the chaos cost the failover (how late the first interruption
warning was delivered; a probe period and a late schedule when the replacement's launch event was lost, so that
the probe, not the launch hook, promoted it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from spotkeeper_local.aws_events import rebalance_recommendation
from spotkeeper_local.aws_faults import FaultWindows
from spotkeeper_local.delivery_chaos import MAX_DELAY
from spotkeeper_local.drill_hedged import longest_no_tgi_up, ready_replicas, replica_lanes, requests_received
from spotkeeper_local.drill_world import SHORT_NAMES, DrillWorld
from spotkeeper_local.embedded_aws import EmbeddedAws, LocalTemplate
from spotkeeper_local.report import Check, DrillError, ScenarioResult, client_stats
from spotkeeper_local.scenario_file import (
    AwsFaults,
    Bound,
    EipDisassociate,
    EipMove,
    EventChaos,
    InterruptionWarning,
    LambdaThrottle,
    RebalanceRecommendation,
    Reclaim,
    Scenario,
    Setup,
    SpotCapacity,
    TerminateByHand,
    TgiFault,
    ZoneOutage,
    evaluate,
)

WARM_UP_LIMIT = 900.0  # simulated seconds the first instance(s) may take to serve, past the load time
HEDGED_READY_LIMIT = 120.0  # and then for every replica to be in the ready set, the EIP on one
SPOT_NOTICE = 120.0
PROBE_PERIOD = 60.0  # the health probe's schedule: it finishes a launch whose lifecycle event was lost
# Under delivery chaos: the warning up to MAX_DELAY late, and a lost launch event costs a probe period and a late
# schedule: every run lasts that much longer.
CHAOS_ROOM = MAX_DELAY + PROBE_PERIOD + MAX_DELAY
WARNING = "EC2 Spot Instance Interruption Warning"
LAUNCH_EVENT = "EC2 Instance-launch Lifecycle Action"
# facts the report keeps under the names the code scenarios used: the first time each action played
FIRST_AT = {
    "spot-interruption-warning": "warning_at",
    "reclaim": "reclaimed_at",
    "rebalance-recommendation": "recommendation_at",
    "spot-capacity-lost": "spot_lost_at",
    "spot-capacity-back": "spot_back_at",
}


class ScenarioError(DrillError):
    """The scenario could not be played as written (the first instance never served, a role named nothing)."""


def load_seconds_of(setup: Setup, options: Any = None) -> float:
    """Every instance's simulated launch-to-ready: the drill's --load-seconds or --fast-start, else the file's
    load_seconds, else the launch-to-ready model's with the file's fast_start."""
    from spotkeeper_local.drill import modelled_seconds

    if options is not None and getattr(options, "load_source", "model") == "--load-seconds":
        return float(options.load_seconds)
    fast_start = getattr(options, "fast_start", "off") if options is not None else "off"
    if fast_start != "off":
        return float(modelled_seconds(fast_start))
    if setup.load_seconds is not None:
        return float(setup.load_seconds)
    return float(modelled_seconds(setup.fast_start))


def replicas_of(setup: Setup, options: Any = None) -> int:
    """The file's replicas; the drill's --replicas N for a file of hedged replicas (N >= 2)."""
    given = getattr(options, "replicas", None) if options is not None else None
    return int(given) if given is not None and setup.replicas > 1 else setup.replicas


def chaos_of(setup: Setup, options: Any = None) -> int | None:
    given = getattr(options, "chaos", None) if options is not None else None
    return given if given is not None else setup.chaos


def play(
    scenario: Scenario,
    aws: EmbeddedAws,
    template: LocalTemplate,
    parameters: dict[str, str],
    options: Any = None,
) -> ScenarioResult:
    setup = scenario.setup
    load_seconds = load_seconds_of(setup, options)
    replicas = replicas_of(setup, options)
    parameters = dict(parameters)
    if replicas > 1:
        if "Replicas" not in template.body.get("Parameters", {}):
            raise ScenarioError(f"{scenario.name}: template.yaml has no Replicas parameter: no hedged replicas")
        parameters["Replicas"] = str(replicas)
    if setup.zones > 1:
        parameters["FleetSubnetIds"] = aws.fleet_subnets(setup.zones)
    world = DrillWorld.deploy(
        aws,
        template,
        f"drill-{scenario.name}",
        parameters,
        load_seconds,
        spotkeeper=setup.spotkeeper,
        chaos=chaos_of(setup, options),
    )
    if getattr(options, "serial_delivery", False):
        world.concurrency = 1
    clients = getattr(options, "clients", None) or setup.clients.count
    interval = getattr(options, "request_interval", None) or setup.clients.interval
    try:
        return Engine(world, scenario, replicas, clients, interval).play()
    finally:
        world.close()


class Engine:
    def __init__(self, world: DrillWorld, scenario: Scenario, replicas: int, clients: int, interval: float) -> None:
        self.world = world
        self.scenario = scenario
        self.replicas = replicas
        self.clients = clients
        self.interval = interval
        self.original: str | None = None
        self.played: list[list[Any]] = []  # [t, action, instance or detail]
        self.marks: dict[str, float] = {}
        self.held: dict[str, float] = {}  # condition -> the first t (>= 0) it held
        self.warned: dict[str, float] = {}  # instance -> when its (first) warning played
        self.received_after_warning: dict[str, int] = {}  # instance -> its TGI's requests, just after its warning
        self._waiting: list[tuple[str, Any]] = []  # (condition, action) not yet scheduled
        self._chaos: list[dict[str, Any]] = []
        self._started = False
        # Ops act with their own credentials: faults injected into the functions' clients do not touch them.
        self.hand = world.aws.session().client("ec2")
        self.faults = FaultWindows(world.clock.now)
        built = [
            world.clients.__dict__[n]
            for n in ("autoscaling", "ec2", "sns", "cloudwatch")
            if n in world.clients.__dict__
        ]
        self.faults.install(world.clients.boto3_session(), built)
        self._put = world.put_event
        world.put_event = self._put_event  # type: ignore[method-assign]
        world.clock.on_advance(self._every_second)

    def time(self, value: float | str) -> float:
        seconds = evaluate(value, load=self.world.load_seconds)
        if seconds < 0:
            raise ScenarioError(f"{self.scenario.name}: {value!r} is {seconds:g} s: a time is never negative")
        return seconds

    # playing ----------------------------------------------------------------------------------------------
    def play(self) -> ScenarioResult:
        world, setup = self.world, self.scenario.setup
        for rule in setup.capacity:
            self._capacity(rule.spot, rule.instance_types, rule.zones, "at the start")
        if not setup.spotkeeper:
            self.original = self._hand_run_start()
        elif self.replicas > 1:
            self.original = self._hedged_warm_up()
        else:
            if not world.run_until(lambda: self._serving_ready() is not None, world.load_seconds + WARM_UP_LIMIT):
                raise ScenarioError(f"{self.scenario.name}: the first instance never became the serving instance")
            self.original = self._serving_ready()
        self._start_clients()
        self._started = True
        for action in self.scenario.timeline:
            if action.when is None:
                self._schedule(self.time(action.at), action)
            else:
                self._waiting.append((action.when, action))
        run = self.scenario.run
        room = CHAOS_ROOM if world.chaos is not None else 0.0
        if run.seconds is not None:
            world.run_for(self.time(run.seconds) + room)
        else:
            condition = self._condition(run.until or "")
            world.run_until(condition, max(0.0, self.time(run.limit) + room - world.t()))
            world.run_for(self.time(run.settle))
        return self._result()

    def _start_clients(self) -> None:
        world, setup = self.world, self.scenario.setup
        via = setup.clients.via
        if via == "elastic-ip":
            world.start_load(
                world.start_eip_router(), self.interval, "elastic ip", keep_alive=False, clients=self.clients
            )
        else:
            world.start_load(world.start_gateway(), self.interval, "gateway", clients=self.clients)
        if via == "both":
            world.start_eip_clients(self.interval, clients=self.clients)
        for pool in (world.load, world.eip_load):
            if pool is not None and pool.timeout != setup.clients.timeout:
                pool.stop()  # nothing sent yet: the same clients, waiting as long as the file says
                pool.timeout = setup.clients.timeout
                pool.start()

    def _hand_run_start(self) -> str:
        """Without spotkeeper, as ops run it by hand: the group's instance loads TGI, someone associates the EIP."""
        world = self.world
        first = world.group.members()[0][0]
        if not world.run_until(
            lambda: world.fleet.servers.get(first) is not None and world.fleet.servers[first].state == "ready",
            world.load_seconds + 60,
        ):
            raise ScenarioError(f"{self.scenario.name}: the first instance's TGI never became ready")
        self.hand.associate_address(AllocationId=world.stack.eip_allocation_id, InstanceId=first)
        world.note(f"ops: Elastic IP associated with {first} by hand")
        return first

    def _hedged_warm_up(self) -> str:
        """The group's N instances boot, spotkeeper puts each in the ready set and the EIP on one of them."""
        world, n = self.world, self.replicas

        def tgi_up() -> bool:
            members = dict(world.group.members())
            up = [i for i, server in world.fleet.servers.items() if i in members and server.state == "ready"]
            return len(up) >= n and world.eip_holder() is not None

        def all_serving() -> bool:
            ready = ready_replicas(world)
            return len(ready) >= n and world.eip_holder() in ready

        if not (
            world.run_until(tgi_up, world.load_seconds + WARM_UP_LIMIT)
            and world.run_until(all_serving, HEDGED_READY_LIMIT)
        ):
            records = world.ready_set_records()
            raise ScenarioError(
                f"{self.scenario.name}: the {n} replicas never all served (ready set "
                f"{records or 'empty: the product keeps none'}, EIP on {world.eip_holder()})"
            )
        holder = world.eip_holder()
        assert holder is not None
        return holder

    def _schedule(self, at: float, action: Any) -> None:
        self.world.at(at, action.do, lambda: self._do(action))

    def _every_second(self, _now: float) -> None:
        if not self._started:
            return
        t = round(self.world.t(), 1)
        for name in ("replacement-launched", "replacement-ready", "replacement-serves", "on-demand-serves"):
            if name not in self.held and self._condition(name)():
                self.held[name] = t
        for item in list(self._waiting):
            condition, action = item
            if condition in self.held:
                self._waiting.remove(item)
                self._schedule(self.held[condition] + self.time(action.at), action)

    def _condition(self, name: str) -> Callable[[], bool]:
        conditions: dict[str, Callable[[], bool]] = {
            "replacement-launched": lambda: self._role("replacement") is not None,
            "replacement-ready": self._replacement_ready,
            "replacement-serves": self._replacement_serves,
            "on-demand-serves": self._on_demand_serves,
            "back-on-spot": self._back_on_spot,
        }
        if name not in conditions:
            raise ScenarioError(f"{self.scenario.name}: the engine cannot wait for {name!r}")
        return conditions[name]

    # what the world looks like -------------------------------------------------------------------------------
    def _serving_ready(self) -> str | None:
        world = self.world
        serving = world.endpoint().get("serving_instance_id")
        server = world.fleet.servers.get(serving or "")
        if serving and server is not None and server.state == "ready" and world.eip_holder() == serving:
            return serving
        return None

    def _serving_now(self) -> list[str]:
        """The instances that serve: the ready set's with N >= 2, else the serving instance behind the EIP."""
        if self.replicas > 1:
            return ready_replicas(self.world)
        serving = self._serving_ready()
        return [serving] if serving else []

    def _replacement_ready(self) -> bool:
        replacement = self._role("replacement")
        server = self.world.fleet.servers.get(replacement or "")
        return server is not None and server.state == "ready"

    def _replacement_serves(self) -> bool:
        replacement = self._role("replacement")
        return replacement is not None and replacement in self._serving_now()

    def _on_demand_serves(self) -> bool:
        return any(self.world.group.purchase.get(i) == "on-demand" for i in self._serving_now())

    def _back_on_spot(self) -> bool:
        # The On-Demand instances gone: the group replaces them when the fall-forward lowers its On-Demand base.
        world = self.world
        serving = self._serving_now()
        return (
            len(serving) >= self.replicas
            and all(world.group.purchase.get(i) == "spot" for i in serving)
            and world.endpoint().get("mode") == "spot"
            and len(world.group.members()) == self.replicas
        )

    def _running(self) -> dict[str, Any]:
        """This scenario's instances that EC2 has not terminated."""
        from moto.ec2.models import ec2_backends

        from spotkeeper_local.auto_scaling_group import ACCOUNT_ID, REGION

        backend = ec2_backends[ACCOUNT_ID][REGION]
        ours = self.world.launched_at  # this scenario's stack (the embedded AWS keeps earlier scenarios' too)
        return {i.id: i for i in backend.all_instances() if i.state in ("pending", "running") and i.id in ours}

    def _role(self, role: str, zone: str | None = None) -> str | None:
        world = self.world
        running = self._running()
        if zone is not None:  # only the instances of that zone can take the role
            running = {i: instance for i, instance in running.items() if instance.placement.zone == zone}
            fixed = {"serving", "original", "primary", "warned"}
            if role in fixed:
                found = self._role(role)
                return found if found in running else None
        launched = sorted((at, i) for i, at in world.launched_at.items() if i in running)
        members = [i for i, _ in world.group.members() if i in running]
        by_launch = sorted(members, key=lambda i: world.launched_at.get(i, float("inf")))
        if role == "serving":
            return world.endpoint().get("serving_instance_id")
        if role == "original":
            return self.original
        if role == "primary":
            return world.eip_holder()
        if role == "warned":
            warned = [d for _, do, d in self.played if do == "spot-interruption-warning"]
            return warned[-1] if warned else None
        if role == "secondary":
            holder = world.eip_holder()
            ready = ready_replicas(world)
            return next((i for i in by_launch if i in ready and i != holder), None)
        if role == "replacement":
            return next((i for at, i in launched if world.t(at) >= 0 and i != self.original), None)
        if role == "newest":
            return launched[-1][1] if launched else None
        if role in ("any-spot", "on-demand"):
            purchase = "spot" if role == "any-spot" else "on-demand"
            return next((i for i in by_launch if world.group.purchase.get(i) == purchase), None)
        if role == "nothing":
            return None
        raise ScenarioError(f"{self.scenario.name}: unknown role {role!r}")

    def _target(self, role: str, action: str, zone: str | None = None) -> str:
        instance = self._role(role, zone)
        if instance is None:
            where = f" in {zone}" if zone else ""
            raise ScenarioError(f"{self.scenario.name}: at t={self.world.t():g}s {action}: no {role} instance{where}")
        return instance

    def _placement(self) -> tuple[str, str]:
        """The instance type and zone the group launches into (the stand-in uses its first override and subnet)."""
        from moto.autoscaling.models import autoscaling_backends
        from moto.ec2.models import ec2_backends

        from spotkeeper_local.auto_scaling_group import ACCOUNT_ID, REGION

        group = autoscaling_backends[ACCOUNT_ID][REGION].autoscaling_groups[self.world.stack.group]
        overrides = (group.mixed_instances_policy or {}).get("LaunchTemplate", {}).get("Overrides", [])
        instance_type = overrides[0]["InstanceType"] if overrides else ""
        subnet = (group.vpc_zone_identifier or "").split(",")[0]
        zone = ec2_backends[ACCOUNT_ID][REGION].get_subnet(subnet).availability_zone if subnet else ""
        return instance_type, zone

    # the actions ----------------------------------------------------------------------------------------------
    def _do(self, action: Any) -> None:
        world = self.world
        t = round(world.t(), 1)
        self.marks.setdefault(action.do, t)
        detail: Any = None
        if isinstance(action, InterruptionWarning):
            detail = self._target(action.target, action.do, action.zone)
            lead = "reclaim in 120 s" + (", no rebalance lead" if self.replicas > 1 else "")
            self.warned.setdefault(detail, t)
            world.spot_warning(detail, lead)
            quiet = self.scenario.expect.warned_quiet_after_seconds
            if quiet is not None:
                instance = detail
                world.at(
                    t + quiet,
                    "count",
                    lambda: self.received_after_warning.setdefault(instance, requests_received(world).get(instance, 0)),
                )
        elif isinstance(action, RebalanceRecommendation):
            detail = self._target(action.target, action.do, action.zone)
            world.note(f"EC2: rebalance recommendation for {detail}", "elevated risk of interruption")
            world.group.rebalance_recommendation(detail)
            world.put_event(rebalance_recommendation(detail, at=world.clock.now()))
        elif isinstance(action, Reclaim):
            detail = self._target(action.target, action.do, action.zone)
            world.spot_reclaim(detail)
        elif isinstance(action, SpotCapacity):
            back = action.do == "spot-capacity-back"
            detail = self._capacity(back, action.instance_types, action.zones, "")
        elif isinstance(action, ZoneOutage):
            detail = self._zone_outage(action.zone)
        elif isinstance(action, TgiFault):
            detail = self._target(action.target, action.do, action.zone)
            server = world.fleet.servers.get(detail)
            if server is None:
                raise ScenarioError(f"{self.scenario.name}: at t={t:g}s {action.do}: {detail} runs no TGI")
            if action.do == "tgi-crash":
                world.note(f"{detail}: TGI crashes", "the port closes")
                server.kill()
            elif action.do == "tgi-hang":
                world.note(f"{detail}: TGI hangs", "the port accepts connections, nothing answers")
                server.set_hung()
            else:
                world.note(f"{detail}: TGI fails /health", "503, generations fail")
                server.set_unhealthy()
        elif isinstance(action, EipMove):
            detail = self._target(action.to, action.do)
            self.hand.associate_address(
                AllocationId=world.stack.eip_allocation_id, InstanceId=detail, AllowReassociation=True
            )
            world.note(f"ops: Elastic IP moved to {detail} ({action.to}) by hand")
        elif isinstance(action, EipDisassociate):
            addresses = self.hand.describe_addresses(AllocationIds=[world.stack.eip_allocation_id])["Addresses"]
            association = addresses[0].get("AssociationId") if addresses else None
            if association is None:
                raise ScenarioError(f"{self.scenario.name}: at t={t:g}s eip-disassociate: the EIP is on nothing")
            detail = addresses[0].get("InstanceId")
            self.hand.disassociate_address(AssociationId=association)
            world.note(f"ops: Elastic IP disassociated from {detail} by hand")
        elif isinstance(action, TerminateByHand):
            detail = self._target(action.target, action.do, action.zone)
            world.note(f"ops: {detail} terminated by hand (EC2 TerminateInstances)")
            world.group.terminated_outside(detail, "by hand (EC2 TerminateInstances)", "terminated outside the group")
        elif isinstance(action, LambdaThrottle):
            before = world.concurrency
            world.concurrency = 0
            world.note("Lambda: throttled", f"no invocation for {action.seconds:g} s; events wait in their queues")

            def lift() -> None:
                world.concurrency = before
                world.note("Lambda: throttling over")

            world.at(world.t() + action.seconds, "lambda throttle over", lift)
            detail = action.seconds
        elif isinstance(action, AwsFaults):
            kind = "throttling" if action.do == "aws-throttling" else "5xx"
            self.faults.open(action.service, kind, action.seconds, action.failures_per_call)
            world.note(
                f"AWS: {action.service} {kind} for {action.seconds:g} s",
                f"the first {action.failures_per_call} attempts of every call fail",
            )
            detail = action.service
        elif isinstance(action, EventChaos):
            self._chaos.append(
                {"kind": action.do, "event": action.event, "left": action.count, "seconds": action.seconds}
            )
            world.note(
                f"EventBridge: {action.do.removeprefix('events-')} of the next {action.count} {action.event} events"
            )
            detail = action.event
        else:
            raise ScenarioError(f"{self.scenario.name}: the engine cannot play {action.do!r}")
        self.played.append([t, action.do, detail])

    def _capacity(self, spot: bool, types: list[str] | None, zones: list[str] | None, when: str) -> str:
        instance_type, _ = self._placement()
        world = self.world
        group_zones = [zone for zone, _ in world.group.zones()]
        scope = f"{', '.join(types) if types else 'every type'} in {', '.join(zones) if zones else 'every zone'}"
        try:
            world.market.set_capacity(spot, instance_types=types, zones=zones)
        except ValueError as error:
            raise ScenarioError(f"{self.scenario.name}: spot capacity {scope}: {error}") from None
        hits = (types is None or instance_type in types) and (zones is None or bool(set(zones) & set(group_zones)))
        what = "is back" if spot else "runs out"
        detail = (
            f"placement score {9 if spot else 1}" + (f" in {', '.join(zones)}" if zones else "")
            if hits
            else f"not the group's {instance_type} in {', '.join(group_zones)}"
        )
        world.note(f"EC2: Spot capacity {what} for {scope} {when}".rstrip(), detail)
        return scope

    def _zone_outage(self, zone: str | None) -> str:
        world = self.world
        _, group_zone = self._placement()
        zone = zone or group_zone
        try:
            world.market.set_capacity(False, zones=[zone])
        except ValueError as error:
            raise ScenarioError(f"{self.scenario.name}: zone-outage: {error}") from None
        struck = [i for i, instance in self._running().items() if instance.placement.zone == zone]
        world.note(f"EC2: {zone} fails", f"Spot capacity gone there; {len(struck)} instances unreachable")
        for instance_id in struck:
            world.fleet.kill(instance_id)
        return zone

    def _put_event(self, event: dict[str, Any]) -> None:
        """Onto the bus, unless a scenario's EventBridge chaos loses, delays or duplicates it."""
        world = self.world
        kind = SHORT_NAMES.get(event.get("detail-type", ""), event.get("detail-type", ""))
        for rule in self._chaos:
            if rule["left"] <= 0 or rule["event"] not in ("any", kind):
                continue
            rule["left"] -= 1
            if rule["kind"] == "events-loss":
                world.note(f"EventBridge: {kind} lost")
                return
            if rule["kind"] == "events-delay":
                world.note(f"EventBridge: {kind} delayed {rule['seconds']:g} s")
                world.at(world.t() + rule["seconds"], "delayed event", lambda: self._put(event))
                return
            world.note(f"EventBridge: {kind} delivered twice")
            self._put(event)
            world.at(world.t() + rule["seconds"], "duplicate event", lambda: self._put(event))
            return
        self._put(event)

    # the report -----------------------------------------------------------------------------------------------
    def _replacement(self) -> str | None:
        world = self.world
        return self._role("replacement") or next(
            (i for at, i in sorted((a, i) for i, a in world.launched_at.items()) if world.t(at) >= 0), None
        )

    def _chaos_allowance(self, warned: str | None, replacement: str | None) -> tuple[float, str]:
        """What the delivery chaos cost a failover: the warning's delivery delay, and one probe period plus a late
        schedule when the replacement's launch event was lost (the probe, not the launch hook, promotes it)."""
        world = self.world
        if world.chaos is None:
            return 0.0, ""
        late = (world.chaos.first_delay(WARNING, warned) or 0.0) if warned else 0.0
        lost = replacement is not None and world.chaos.lost(LAUNCH_EVENT, replacement)
        allowance = late + (PROBE_PERIOD + MAX_DELAY if lost else 0.0)
        why = f"chaos {allowance:.0f} s: warning {late:.0f} s late" + (", launch event lost" if lost else "")
        return allowance, why

    def _result(self) -> ScenarioResult:
        world = self.world
        replacement = self._replacement()
        took = None
        if replacement is not None and replacement in world.ready_at:
            took = world.ready_at[replacement] - world.launched_at[replacement]
        marks = dict(self.marks)
        if took is not None and replacement is not None:
            marks["replacement ready"] = round(world.t(world.ready_at[replacement]), 1)
        first_target = {do: d for _, do, d in reversed(self.played)}
        interrupted = first_target.get("spot-interruption-warning")
        allowance, why = self._chaos_allowance(interrupted, replacement)
        facts: dict[str, Any] = {
            "original": self.original,
            "interrupted": interrupted,
            "at_risk": first_target.get("rebalance-recommendation"),
            "replacement": replacement,
            "replacement_launch_to_ready_seconds": took,
            "load_seconds": world.load_seconds,
            "replicas": self.replicas,
            "clients_per_address": self.clients,
            "played": self.played,
            "marks": marks,
            "conditions": dict(self.held),
            "chaos_allowance_seconds": allowance,
            "aws_faults_injected": dict(self.faults.injected),
        }
        for do, name in FIRST_AT.items():
            if do in self.marks:
                facts[name] = self.marks[do]
        facts.update(self._replica_facts(interrupted))
        return _result(world, self.scenario, facts, self._checks(allowance, why))

    def _replica_facts(self, interrupted: str | None) -> dict[str, Any]:
        world = self.world
        facts: dict[str, Any] = {}
        if world.eip_load is not None:
            eip = client_stats("elastic ip", world.eip_load.outcomes, 0.0, world.t())
            facts["eip_clients"] = {
                "sent": eip.sent,
                "succeeded": eip.succeeded,
                "failed": eip.failed,
                "longest_no_success_seconds": eip.longest_outage_seconds,
                "outage_from": eip.outage_from,
                "outage_to": eip.outage_to,
            }
            facts["eip_requests"] = [[o.at, o.ok] for o in world.eip_load.outcomes]
        dark, dark_from = longest_no_tgi_up(world, 0.0, world.t())
        facts["longest_no_tgi_up_seconds"], facts["no_tgi_up_from"] = dark, dark_from
        if self.replicas > 1:
            lanes = replica_lanes(world)
            warned_at = self.warned.get(interrupted or "")
            facts.update(
                {
                    "interrupted_role": None
                    if interrupted is None
                    else ("primary" if interrupted == self.original else "replica"),
                    "primary_at_start": self.original,
                    "eip_moved_at": None
                    if warned_at is None
                    else next((t for t, h in lanes["primary"] if t >= warned_at and h != interrupted), None),
                    "replica_states": lanes["replicas"],
                    "zones": {i: world.group.zone_of(i) for i in lanes["replicas"]},
                    "primary_changes": lanes["primary"],
                    "ready_at_end": ready_replicas(world),
                }
            )
        if self.warned:
            received = requests_received(world)
            facts["requests_received"] = received
            if self.received_after_warning:
                facts["requests_to_warned_after_warning"] = sum(
                    received.get(i, 0) - n for i, n in self.received_after_warning.items()
                )
        return facts

    def _checks(self, allowance: float, why: str) -> list[Check]:
        world, expect = self.world, self.scenario.expect
        assert world.load is not None
        end = world.t()
        clients = client_stats(world.via, world.load.outcomes, 0.0, end)
        endpoint = world.endpoint()
        checks: list[Check] = []
        names = {"load": world.load_seconds, "chaos": allowance}

        def bound(name: str, value: float, b: Bound, note: str = "") -> None:
            low, high = evaluate(b.min, **names), evaluate(b.max, **names)
            shown = f"[{low:g}, {high:g}]" if isinstance(b.max, int | float) else f"[{low:g}, {high:g}] ({b.max})"
            checks.append(Check(f"{name} in {shown}", low <= value <= high, f"{value:g}{note}"))

        outage_note = ""
        if clients.outage_from is not None:
            outage_note = (
                f" (t={clients.outage_from:g}..{clients.outage_to:g}; launch-to-ready {world.load_seconds:g} s"
            )
            outage_note += f", {why})" if why else ")"
        bound(
            f"longest window without a successful request via the {world.via} (s)",
            clients.longest_outage_seconds,
            expect.longest_no_success_seconds,
            outage_note,
        )
        if expect.failed_requests is not None:
            bound(f"failed requests via the {world.via}", clients.failed, expect.failed_requests, f" of {clients.sent}")
        if expect.unanswered_requests is not None:
            failures = Counter(str(o.status or o.detail) for o in world.load.outcomes if not o.ok)
            unanswered = sum(1 for o in world.load.outcomes if not o.ok and o.status is None)
            kinds = ", ".join(f"{kind} x{count}" for kind, count in failures.most_common())
            note = f" of {clients.failed} failed ({kinds})" if kinds else f" of {clients.failed} failed"
            bound(f"requests via the {world.via} with no HTTP answer", unanswered, expect.unanswered_requests, note)
        if world.eip_load is not None:
            eip = client_stats("elastic ip", world.eip_load.outcomes, 0.0, end)
            if expect.eip_longest_no_success_seconds is not None:
                bound(
                    "longest window without a successful request via the elastic ip (s)",
                    eip.longest_outage_seconds,
                    expect.eip_longest_no_success_seconds,
                    f" (from t={eip.outage_from:g})" if eip.outage_from is not None else "",
                )
            if expect.eip_failed_requests is not None:
                bound("failed requests via the elastic ip", eip.failed, expect.eip_failed_requests, f" of {eip.sent}")
        if expect.recovered is not None:
            checks.append(
                Check(
                    "clients recovered" if expect.recovered else "clients never recovered",
                    clients.recovered == expect.recovered,
                    f"recovered={clients.recovered}; {clients.failed} of {clients.sent} failed",
                )
            )
        mode = endpoint.get("mode", "spot")
        if expect.capacity_mode is not None:
            checks.append(Check(f"capacity mode ends {expect.capacity_mode}", mode == expect.capacity_mode, mode))
        for seen in expect.modes_seen:
            times = [t for t, m in world.mode_log if m == seen and t >= 0]
            checks.append(
                Check(f"capacity mode was {seen}", bool(times), f"from t={times[0]:g}s" if times else "never")
            )
        for unseen in expect.modes_not_seen:
            times = [t for t, m in world.mode_log if m == unseen and t >= 0]
            alerts = [a for a in world.alerts if a.get("event") == "fallback-on-demand" and a["t"] >= 0]
            extra = f", {len(alerts)} fallback-on-demand alerts" if unseen == "on-demand" else ""
            checks.append(
                Check(
                    f"capacity mode never {unseen}" + (" (no On-Demand fallback)" if unseen == "on-demand" else ""),
                    not times,
                    (f"{unseen} from t={times[0]:g}s" if times else f"never {unseen}") + extra,
                )
            )
        members = world.group.members()
        if expect.desired_capacity is not None:
            checks.append(
                Check(
                    f"desired capacity ends {expect.desired_capacity}",
                    world.group.desired() == expect.desired_capacity,
                    str(world.group.desired()),
                )
            )
        if expect.group_size is not None:
            checks.append(
                Check(
                    f"the group ends with {expect.group_size} instances",
                    len(members) == expect.group_size,
                    ", ".join(f"{i} {s}" for i, s in members) or "none",
                )
            )
        serving = endpoint.get("serving_instance_id")
        if expect.serving is not None:
            meant = self._role(expect.serving)
            checks.append(
                Check(
                    f"the serving instance ends as {expect.serving}",
                    meant is not None and serving == meant,
                    f"serving {serving}, {expect.serving} is {meant or 'nothing'}",
                )
            )
        if expect.serving_purchase is not None:
            bought = world.group.purchase.get(serving or "")
            checks.append(
                Check(
                    f"the serving instance is {expect.serving_purchase}",
                    bought == expect.serving_purchase,
                    f"{serving} is {bought}",
                )
            )
        holder = world.eip_holder()
        if expect.eip_on is not None:
            meant = self._role(expect.eip_on)
            checks.append(
                Check(
                    f"the EIP ends on {expect.eip_on}",
                    holder == meant and (meant is not None or expect.eip_on == "nothing"),
                    f"EIP on {holder or 'nothing'}, {expect.eip_on} is {meant or 'nothing'}",
                )
            )
        if expect.eip_not_on is not None:
            meant = self._role(expect.eip_not_on)
            checks.append(
                Check(
                    f"the EIP does not end on {expect.eip_not_on}",
                    holder != meant and (meant is not None or expect.eip_not_on == "nothing"),
                    f"EIP on {holder or 'nothing'}, {expect.eip_not_on} is {meant or 'nothing'}",
                )
            )
        if expect.served_throughout_after is not None:
            checks.append(self._served_throughout(expect.served_throughout_after))
        if expect.ready_replicas is not None:
            ready = ready_replicas(world)
            warned = [i for i in ready if i in self.warned]
            checks.append(
                Check(
                    f"{expect.ready_replicas} replicas ready at the end, the EIP on one of them",
                    len(ready) >= expect.ready_replicas and holder in ready and not warned,
                    f"ready {', '.join(ready) or 'none'}; EIP on {holder}; warned among them: {warned or 'none'}",
                )
            )
        if expect.warned_quiet_after_seconds is not None:
            received = requests_received(world)
            late = {i: received.get(i, 0) - n for i, n in self.received_after_warning.items()}
            checks.append(
                Check(
                    f"no request reached a warned instance {expect.warned_quiet_after_seconds:g} s after its warning",
                    bool(self.received_after_warning) and not any(late.values()),
                    "; ".join(f"{i} received {n}" for i, n in late.items()) or "no warning played",
                )
            )
        if expect.eip_off_warned_within_seconds is not None:
            checks.append(self._eip_off_warned(expect.eip_off_warned_within_seconds))
        if expect.aws_faults_injected is not None:
            bound("AWS call attempts failed by the fault windows", self.faults.total, expect.aws_faults_injected)
        sent = [a["event"] for a in world.alerts if a["t"] >= 0]
        for name in expect.alerts.must:
            checks.append(Check(f"alert {name} sent", name in sent, f"{sent.count(name)} sent"))
        for name in expect.alerts.must_not:
            checks.append(Check(f"no {name} alert", name not in sent, f"{sent.count(name)} sent"))
        checks += self._alarm_checks(clients.longest_outage_seconds)
        failed = _handler_problems(world)
        checks.append(
            Check(
                "every handler invocation succeeded within its timeout"
                if expect.handlers_succeed
                else "some handler invocation failed (expected: see the scenario's story)",
                (not failed) == expect.handlers_succeed,
                f"{len(world.invocations)} invocations" + (f"; {'; '.join(failed[:3])}" if failed else ""),
            )
        )
        if expect.no_stray_instances:
            in_group = {i for i, _ in members}
            stray = sorted(set(self._running()) - in_group)
            checks.append(Check("no instance left running outside the group", not stray, ", ".join(stray) or "none"))
        return checks

    def _served_throughout(self, condition: str) -> Check:
        world = self.world
        assert world.load is not None
        since = self.held.get(condition)
        name = f"never without a serving instance after {condition}"
        if since is None:
            return Check(name, False, f"{condition} never held")
        # The world logs a second (and sends its requests) before it delivers that second's events; the condition is
        # seen after them: from the next second on.
        if self.replicas > 1:
            gaps = [t for t, states, _ in world.replica_log if t > since and "ready" not in states.values()]
        else:
            gaps = [t for t, s, ready in world.serving_log if t > since and not (s and ready)]
        failures = [o for o in world.load.outcomes if o.at > since and not o.ok]
        return Check(
            name,
            not gaps and not failures,
            f"{len(gaps)} s without a ready serving instance, {len(failures)} failed requests after t={since:g}s",
        )

    def _eip_off_warned(self, within: float) -> Check:
        world = self.world
        lanes = replica_lanes(world)["primary"]
        late: list[str] = []
        story: list[str] = []
        for instance, warned_at in self.warned.items():
            holder_then = next((h for t, h in reversed(lanes) if t <= warned_at), None)
            if holder_then != instance:
                story.append(f"the EIP was not on {instance} at its warning")
                continue
            left = next((t for t, h in lanes if t >= warned_at and h != instance), None)
            story.append(f"off {instance} at t={left}s (warned t={warned_at:g}s)" if left is not None else "never left")
            if left is None or left - warned_at > within:
                late.append(instance)
        return Check(
            f"the EIP leaves a warned instance within {within:g} s",
            bool(self.warned) and not late,
            "; ".join(story) or "no warning played",
        )

    def _alarm_checks(self, outage: float) -> list[Check]:
        world, alarms = self.world, self.scenario.expect.alarms
        evaluator = world.alarms.evaluator if world.alarms is not None else None
        transitions = [c for c in (evaluator.transitions if evaluator is not None else []) if world.t(c.at) >= 0]

        def fired(suffix: str) -> list[float]:
            return [round(world.t(c.at)) for c in transitions if c.alarm.endswith(suffix) and c.state == "ALARM"]

        checks = []
        for suffix in alarms.must:
            times = fired(suffix)
            checks.append(Check(f"alarm {suffix} went to ALARM", bool(times), f"at t={times}s" if times else "never"))
        for suffix in alarms.must_not:
            times = fired(suffix)
            checks.append(
                Check(f"alarm {suffix} stayed out of ALARM", not times, f"ALARM at t={times}s" if times else "never")
            )
        for suffix in alarms.must_when_outlasted:
            definition = next(
                (d for name, d in (evaluator.alarms.items() if evaluator is not None else []) if name.endswith(suffix)),
                None,
            )
            name = f"the {suffix} alarm fired and alerted"
            if definition is None:
                checks.append(Check(name, False, f"the stack has no alarm named *{suffix}"))
                continue
            needs = definition.period * definition.datapoints_to_alarm + 2 * PROBE_PERIOD
            times = fired(suffix)
            alerted = [
                a
                for a in world.alerts
                if a["t"] >= 0 and a.get("event") == "alarm-raised" and definition.name in str(a.get("summary"))
            ]
            if outage < needs:
                checks.append(
                    Check(name, True, f"not expected: {outage:g} s down, the alarm needs {needs:g} s (fired: {times})")
                )
                continue
            checks.append(
                Check(
                    name,
                    bool(times) and bool(alerted),
                    f"{definition.name} in ALARM at t={times[0]}s ({outage:g} s down, the alarm needs {needs:g} s); "
                    f"alert: {alerted[0]['summary']}"
                    if times and alerted
                    else f"{definition.name}: ALARM at {times or 'never'}, {len(alerted)} alerts ({outage:g} s down)",
                )
            )
        return checks


def _handler_problems(world: DrillWorld) -> list[str]:
    failed = [f"{i.function}: {i.error}" for i in world.invocations if i.error]
    late = [
        f"{i.function} ran {i.ended - i.started:.0f} s (past its Lambda timeout)"
        for i in world.invocations
        if i.ended - i.started > world.stack.function_timeout.get(i.function, 900)
    ]
    return failed + late


def _result(world: DrillWorld, scenario: Scenario, facts: dict[str, Any], checks: list[Check]) -> ScenarioResult:
    assert world.load is not None
    end = world.t()
    clients = client_stats(world.via, world.load.outcomes, 0.0, end)
    holder = world.eip_holder()
    endpoint = world.endpoint()
    serving = endpoint.get("serving_instance_id")
    members = dict(world.group.members())
    if holder is None:
        was = world.eip_lost_from
        note = "nothing" + (f" (was on {was}, terminated)" if was else "")
    else:
        role = "serving" if holder == serving else ("in the group" if holder in members else "not in the group")
        state = world.fleet.servers.get(holder)
        note = f"{holder} ({role}{', TGI down' if state is None or state.state != 'ready' else ''})"
    purchase = {i: world.group.purchase.get(i, "?") for i in members}
    facts = {**facts, "serving_changes": _changes(world), "mode_changes": _mode_changes(world)}
    if world.chaos is not None:
        facts["chaos_seed"] = world.chaos.seed
        facts["deliveries"] = world.deliveries
    if not scenario.setup.spotkeeper:
        mode = "spot (no spotkeeper)"
    else:
        mode = endpoint.get("mode", "spot")
        if serving in purchase:
            mode += f" ({serving} is {purchase[serving]})"
    return ScenarioResult(
        key=scenario.name,
        title=scenario.title,
        story=scenario.story,
        clients=clients,
        eip_on=holder,
        eip_note=note,
        serving_instance=serving,
        capacity_mode=mode,
        purchase_options=purchase,
        alerts=list(world.alerts),
        alarms=world.alarm_transitions(),
        timeline=list(world.timeline),
        facts=facts,
        checks=checks,
        samples=list(world.load.outcomes),
        duration=end,
    )


def _changes(world: DrillWorld) -> list[list[Any]]:
    """[t, serving instance, its purchase option, its TGI ready] each time one of them changed."""
    changes: list[list[Any]] = []
    for t, serving, ready in world.serving_log:
        row = [t, serving, world.group.purchase.get(serving or "", None), ready]
        if not changes or changes[-1][1:] != row[1:]:
            changes.append(row)
    return changes


def _mode_changes(world: DrillWorld) -> list[list[Any]]:
    changes: list[list[Any]] = []
    for t, mode in world.mode_log:
        if not changes or changes[-1][1] != mode:
            changes.append([t, mode])
    return changes
