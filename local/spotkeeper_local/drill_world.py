"""One scenario's world: the stack deployed into the embedded AWS, the local world around its group
(``world.World``: stand-ins, instances' TGI, the functions' deps), the gateway, the clients.

Time is simulated and advanced one second at a time (``SteppedClock``); at every second the world
(``DrillWorld._tick``) lets the TGI emulators finish loading, fires what is due (the scenario's scripted
actions, the template's schedules, lifecycle-hook timeouts, the group's launch retries), puts the events AWS
would emit on the EventBridge bus, sends the clients' requests, and delivers what reached the functions' queues
by invoking their real handlers in-process.

Handlers sleep on the same clock (a launch hook polling TGI, a terminate hook draining), so the world keeps
turning while one of them waits: each invocation runs on a thread of its own, one at a time while the world's
loop waits, and its sleep ends at a later tick; events that arrive meanwhile are delivered to concurrent
invocations, as Lambda runs them, none waiting for another to return. With ``concurrency`` (``--serial-delivery``: 1)
each function has that many executions (a reserved concurrency, which Lambda applies per function): an event for
a function whose executions are all busy is throttled as Lambda's asynchronous queue throttles it
(``lambda_runtime.AsyncQueues``: tried again after 1 s, doubling to 5 minutes, dropped to the DLQ past the
function's MaximumEventAgeInSeconds).

With ``chaos`` (``delivery_chaos.DeliveryChaos``, the drill's ``--chaos SEED``) every event taken off a function's
queue is handed on as EventBridge may: one to three copies, each late, out of order; a lifecycle event now and
then not at all. ``deliveries`` says what became of each.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from boto3.dynamodb.types import TypeDeserializer

from spotkeeper_local.auto_scaling_group import ACCOUNT_ID, REGION, GroupStandIn
from spotkeeper_local.aws_events import aws_event, spot_interruption
from spotkeeper_local.cloudwatch_alarms import StackAlarms
from spotkeeper_local.delivery_chaos import DeliveryChaos
from spotkeeper_local.embedded_aws import DeployedStack, EmbeddedAws, LocalTemplate
from spotkeeper_local.emulated_fleet import EmulatedInstances
from spotkeeper_local.lambda_runtime import AsyncQueues, expiry_record, failure_record, load_function, retry_delay
from spotkeeper_local.load import ClientPool, ElasticIpRouter, RequestOutcome
from spotkeeper_local.report import TimelineEntry
from spotkeeper_local.sim_clock import SimClock
from spotkeeper_local.spot_market import SpotMarket
from spotkeeper_local.world import World

# The Lambda Web Adapter's own settings: locally uvicorn serves the app directly.
ADAPTER_ENV = ("AWS_LAMBDA_EXEC_WRAPPER", "AWS_LWA_INVOKE_MODE", "AWS_LWA_READINESS_CHECK_PATH", "PORT")
SHORT_NAMES = {
    "EC2 Spot Instance Interruption Warning": "interruption warning",
    "EC2 Instance Rebalance Recommendation": "rebalance",
    "EC2 Instance-launch Lifecycle Action": "launch hook",
    "EC2 Instance-terminate Lifecycle Action": "terminate hook",
    "EC2 Instance Launch Unsuccessful": "launch unsuccessful",
    "CloudWatch Alarm State Change": "alarm",
    "Scheduled Event": "schedule",
}


class SteppedClock(SimClock):
    """A simulated clock whose sleeps pass one second at a time, so what is due at a second happens then.

    A handler's sleep in one of the world's invocations (``DrillWorld``'s workers, see ``park``) does not move the
    clock: the invocation waits while the world's own loop turns, as concurrent Lambda invocations do."""

    step = 1.0
    # Set by the world: called with a sleep's seconds; True when the caller is one of its invocations and slept
    # there (the clock moved on meanwhile), False to sleep by advancing the clock.
    park: Callable[[float], bool] | None = None

    def sleep(self, seconds: float) -> None:
        if self.park is not None and self.park(seconds):
            return
        remaining = float(seconds)
        while remaining > 1e-9:
            step = min(self.step, remaining)
            self.advance(step)
            remaining -= step


class GatewayServer:
    """functions/gateway/app.py's ASGI app under uvicorn on 127.0.0.1, configured by the function's environment."""

    def __init__(self, environment: dict[str, str]) -> None:
        self._environment = environment
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> GatewayServer:
        import uvicorn

        for name, value in self._environment.items():
            if name not in ADAPTER_ENV:
                os.environ[name] = value
        os.environ.pop("TGI_URL", None)  # the serving instance comes from the state table
        app = load_function("gateway").app
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without it
        # every response waits out Nagle's algorithm against the client's delayed ACK (40 ms a request).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="on", http="h11")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        for _ in range(500):
            if self._server.started:
                return self
            if not self._thread.is_alive():
                break
            time.sleep(0.01)
        raise RuntimeError("the gateway did not start (see build/drill/drill.log)")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(10)
            self._server = None


class _WorldClosed(BaseException):
    """Raised in an invocation still asleep when its world closes, so its thread ends."""


@dataclass
class _Worker:
    """One invocation in flight, on a thread of its own that runs only while the world's loop waits for it."""

    function: str
    event: dict[str, Any]
    attempt: int = 1
    thread: threading.Thread | None = None
    wake_at: float = 0.0
    seq: int = 0
    done: bool = False
    resume: threading.Event = field(default_factory=threading.Event)


@dataclass
class Invocation:
    function: str
    event: dict[str, Any]
    started: float
    ended: float
    outcome: Any = None
    error: str | None = None


@dataclass
class DrillWorld:
    """Everything one scenario runs on. Build it with ``DrillWorld.deploy``; ``close`` it at the end."""

    aws: EmbeddedAws
    stack: DeployedStack
    clock: SteppedClock
    local: World
    load_seconds: float
    timeline: list[TimelineEntry] = field(default_factory=list)
    invocations: list[Invocation] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    ready_at: dict[str, float] = field(default_factory=dict)
    origin: float = 0.0
    load: ClientPool | None = None
    eip_load: ClientPool | None = None  # clients of the Elastic IP beside the gateway's (hedged replicas)
    gateway: GatewayServer | None = None
    router: ElasticIpRouter | None = None
    serving_log: list[tuple[float, str | None, bool]] = field(default_factory=list)  # (t, serving, its TGI ready)
    mode_log: list[tuple[float, str]] = field(default_factory=list)
    # Each replica's state every second: loading / ready / warned (the ready set's record, else its TGI) / gone,
    # and which one holds the EIP (the primary). Only the instances the group launched.
    replica_log: list[tuple[float, dict[str, str], str | None]] = field(default_factory=list)
    via: str = ""  # what the clients talk to: the gateway, or the elastic ip
    concurrency: int | None = None  # executions per function (None: Lambda's unreserved scaling)
    eip_lost_from: str | None = None  # the instance the EIP was on when it last went to nothing
    alarms: StackAlarms | None = None  # the stack's CloudWatch alarms, evaluated every minute
    chaos: DeliveryChaos | None = None  # event delivery as EventBridge may do it (None: once, in order, at once)
    _actions: list[tuple[float, int, str, Callable[[], None]]] = field(default_factory=list)
    _next_fire: dict[str, float] = field(default_factory=dict)
    _dirty: bool = False
    _queues: AsyncQueues = field(default_factory=AsyncQueues)
    _workers: list[_Worker] = field(default_factory=list)  # invocations in flight, each asleep until its time
    _worker_of: dict[int, _Worker] = field(default_factory=dict)  # thread ident -> its invocation
    _parked: threading.Event = field(default_factory=threading.Event)
    _seen: dict[str, Any] = field(default_factory=dict)
    _tgi_states: dict[str, str] = field(default_factory=dict)
    _seq: int = 0
    _closed: bool = False
    _clients: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> GroupStandIn:
        assert self.local.group is not None
        return self.local.group

    @property
    def market(self) -> SpotMarket:
        return self.local.market

    @property
    def fleet(self) -> EmulatedInstances:
        return self.local.fleet

    @property
    def clients(self) -> Any:
        return self.local.clients

    @property
    def launched_at(self) -> dict[str, float]:
        return self.local.launched_at

    @property
    def sqs(self) -> Any:
        if "sqs" not in self._clients:
            self._clients["sqs"] = self.clients.boto3_session().client("sqs")
        return self._clients["sqs"]

    @property
    def events_client(self) -> Any:
        if "events" not in self._clients:
            self._clients["events"] = self.clients.boto3_session().client("events")
        return self._clients["events"]

    # building -----------------------------------------------------------------------------------------
    @classmethod
    def deploy(
        cls,
        aws: EmbeddedAws,
        template: LocalTemplate,
        stack_name: str,
        parameters: dict[str, str],
        load_seconds: float,
        spotkeeper: bool = True,
        first_load_seconds: float | None = None,
        chaos: int | None = None,
    ) -> DrillWorld:
        """Deploy the stack and take over its group. Every instance takes ``load_seconds`` from launch to TGI
        ready; the one the stack launches ``first_load_seconds`` if given. ``chaos``: the seed of the event
        delivery's chaos (see the module docstring)."""
        first_load_seconds = load_seconds if first_load_seconds is None else first_load_seconds
        stack = aws.deploy(template, stack_name, parameters)
        clock = SteppedClock()
        session = aws.session()
        if not spotkeeper:
            _plain_group(session, stack)
        autoscaling = session.client("autoscaling")
        described = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[stack.group])["AutoScalingGroups"]
        firsts = {i["InstanceId"] for i in described[0]["Instances"]}
        env = stack.function_env
        local = World.build(
            session,
            clock,
            env,
            group=stack.group,
            launching=spotkeeper,
            load_seconds=lambda instance_id: first_load_seconds if instance_id in firsts else load_seconds,
            tgi_port=int(env["lifecycle"]["TGI_PORT"]),
        )
        if local.group is not None:  # the stand-in spreads the first instances over the zones: new ids among them
            firsts.update(instance_id for instance_id, _ in local.group.members())
        world = cls(aws, stack, clock, local, load_seconds)
        world._queues = AsyncQueues(stack.function_event_age)
        if chaos is not None:
            world.chaos = DeliveryChaos(chaos, stream=stack_name)
        world.origin = clock.now()
        if spotkeeper:  # the stack's alarms watch what its functions publish; the baseline runs none of them
            functions = {spec.logical_id: spec.name for spec in template.functions.values()}
            alarm_template = {**template.body, "Resources": template.alarms}
            world.alarms = StackAlarms.attach(
                session, alarm_template, stack_name, functions, world.put_event, clock.now, stack.dlq_url
            )
        for rule in stack.schedules:
            world._next_fire[rule.name] = world.origin + rule.period_seconds
        clock.on_advance(world._tick)
        clock.park = world._park
        world._pump_group()
        return world

    def start_gateway(self) -> str:
        self.gateway = GatewayServer(self.stack.function_env["gateway"]).start()
        return self.gateway.url

    def start_eip_router(self) -> str:
        address = self.stack.outputs["EipAddress"]
        port = int(self.stack.function_env["lifecycle"]["TGI_PORT"])
        self.router = ElasticIpRouter(address, port, self._eip_target).start()
        return self.router.url

    def start_load(self, base_url: str, interval: float, via: str, keep_alive: bool = True, clients: int = 1) -> None:
        """t = 0 of the scenario: what happened before (the stack coming up) moves to negative times.

        ``clients`` concurrent clients each send one request every ``interval`` seconds (slots spread evenly)."""
        now = self.clock.now()
        shift = now - self.origin
        self.timeline = [TimelineEntry(round(e.t - shift, 1), e.event, e.action) for e in self.timeline]
        for alert in self.alerts:
            alert["t"] = round(alert["t"] - shift, 1)
        self.serving_log = [(t - shift, s, r) for t, s, r in self.serving_log]
        self.mode_log = [(t - shift, m) for t, m in self.mode_log]
        self.replica_log = [(t - shift, states, primary) for t, states, primary in self.replica_log]
        self.origin = now
        self.load = ClientPool(
            base_url, self.clock, self.origin, count=clients, interval=interval, keep_alive=keep_alive
        )
        self.load.start()
        self.via = via
        who = "one client" if clients == 1 else f"{clients} concurrent clients, each"
        self.note("clients start", f"{who} one request every {interval:g} s via the {via}")

    def start_eip_clients(self, interval: float, clients: int = 1) -> None:
        """Clients of the Elastic IP beside the gateway's (after ``start_load``): a new connection a request."""
        url = self.router.url if self.router is not None else self.start_eip_router()
        self.eip_load = ClientPool(url, self.clock, self.origin, count=clients, interval=interval, keep_alive=False)
        self.eip_load.start()
        who = "one client" if clients == 1 else f"{clients} concurrent clients, each"
        self.note("elastic ip clients start", f"{who} one request every {interval:g} s to the EIP's address")

    def close(self) -> None:
        self._closed = True
        for worker in list(self._workers):  # invocations still asleep unwind (_WorldClosed) and end
            worker.resume.set()
        for worker in list(self._workers):
            if worker.thread is not None:
                worker.thread.join(5)
        self._workers.clear()
        if self.load is not None:
            self.load.stop()
        if self.eip_load is not None:
            self.eip_load.stop()
        if self.router is not None:
            self.router.stop()
        if self.gateway is not None:
            self.gateway.stop()
        self.local.close()
        if self.alarms is not None:
            self.alarms.close()

    # time ---------------------------------------------------------------------------------------------
    def t(self, at: float | None = None) -> float:
        """Simulated seconds since the scenario's t = 0."""
        return (self.clock.now() if at is None else at) - self.origin

    def at(self, t: float, label: str, action: Callable[[], None]) -> None:
        """Run ``action`` at scenario time ``t``."""
        self._seq += 1
        self._actions.append((self.origin + t, self._seq, label, action))
        self._actions.sort(key=lambda item: (item[0], item[1]))

    def run_until(self, done: Callable[[], bool], limit: float) -> bool:
        """Advance time second by second until ``done()`` or ``limit`` seconds passed. True if done."""
        deadline = self.clock.now() + limit
        while self.clock.now() < deadline:
            if done():
                return True
            self.clock.advance(1.0)
        return done()

    def run_for(self, seconds: float) -> None:
        self.run_until(lambda: False, seconds)

    def note(self, event: str, action: str = "") -> None:
        self.timeline.append(TimelineEntry(round(self.t(), 1), event, action))

    # the AWS side the drill plays ----------------------------------------------------------------------
    def put_event(self, event: dict[str, Any]) -> None:
        """Put an AWS-shaped event on the default bus: the template's rules route it."""
        self.events_client.put_events(
            Entries=[
                {
                    "Source": event["source"],
                    "DetailType": event["detail-type"],
                    "Detail": json.dumps(event["detail"]),
                    "Resources": event.get("resources", []),
                    "Time": datetime.fromtimestamp(self.clock.now(), UTC),
                }
            ]
        )
        self._dirty = True

    def _fire_schedules(self, now: float) -> None:
        sqs = self.sqs
        for rule in self.stack.schedules:
            while self._next_fire[rule.name] <= now:
                self._next_fire[rule.name] += rule.period_seconds
                if not rule.targets:
                    continue
                event = aws_event(
                    "schedule",
                    resources=[f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/{rule.name}"],
                    at=now,
                )
                for queue in rule.targets:
                    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(event))
                self._dirty = True

    # every simulated second ------------------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        if self._closed:
            return
        self.group.tick()
        self._pump_group()
        while self._actions and self._actions[0][0] <= now:
            _, _, label, action = self._actions.pop(0)
            action()
            self._pump_group()
        self._fire_schedules(now)
        for change in self.alarms.tick(now) if self.alarms is not None else []:
            self.note(f"CloudWatch: {change.alarm} {change.previous} -> {change.state}", change.summary)
        self._watch(now)
        if self.load is not None:
            before = len(self.load.outcomes)
            self.load.due(now)
            self._watch_clients(self.load.outcomes[before:])
        if self.eip_load is not None:
            before = len(self.eip_load.outcomes)
            self.eip_load.due(now)
            self._watch_clients(self.eip_load.outcomes[before:], "elastic ip clients")
        self._deliver()

    def _pump_group(self) -> None:
        log = self.local.pump(self.put_event)
        for at, text in log:
            self.timeline.append(TimelineEntry(round(self.t(at), 1), text))

    def _watch(self, now: float) -> None:
        holder = self.eip_holder()
        if holder != self._seen.get("eip", "unset"):
            if holder is None and self._seen.get("eip") not in (None, "unset"):
                self.eip_lost_from = self._seen["eip"]
            self._seen["eip"] = holder
            self.note(f"EIP now on {holder or 'nothing'}")
        for instance_id, server in self.fleet.servers.items():
            state = server.state
            if self._tgi_states.get(instance_id) != state:
                self._tgi_states[instance_id] = state
                if state == "ready":
                    self.ready_at[instance_id] = now
                    took = now - self.launched_at.get(instance_id, now)
                    self.note(f"{instance_id} TGI ready ({took:.0f} s after launch)")
        endpoint = self.endpoint()
        serving = endpoint.get("serving_instance_id")
        if serving != self._seen.get("serving", "unset"):
            self._seen["serving"] = serving
            self.note(f"state table: serving instance {serving or 'none'}")
        server = self.fleet.servers.get(serving or "")
        self.serving_log.append((self.t(now), serving, bool(server and server.state == "ready")))
        mode = endpoint.get("mode", "spot")
        if mode != self._seen.get("mode", "spot"):
            self._seen["mode"] = mode
            self.note(f"state table: capacity mode {mode}")
        self.mode_log.append((self.t(now), mode))
        self._watch_replicas(now, holder)
        base = self.group.on_demand_base()
        if base != self._seen.get("base", base):
            self.note(f"group MixedInstancesPolicy: OnDemandBaseCapacity {self._seen.get('base')} -> {base}")
        self._seen["base"] = base

    def _watch_clients(self, outcomes: list[RequestOutcome], who: str = "clients") -> None:
        for outcome in outcomes:
            last = self._seen.get(f"{who}_ok")
            if outcome.ok != last:
                self._seen[f"{who}_ok"] = outcome.ok
                if outcome.ok and last is not None:
                    self.timeline.append(TimelineEntry(outcome.at, f"{who}: served again"))
                elif not outcome.ok:
                    why = f"{outcome.status} {outcome.detail}" if outcome.status else outcome.detail
                    self.timeline.append(TimelineEntry(outcome.at, f"{who}: requests fail ({why.strip()[:60]})"))

    def _watch_replicas(self, now: float, primary: str | None) -> None:
        records = self.ready_set_records()
        members = dict(self.group.members())
        states: dict[str, str] = {}
        for instance_id in self.launched_at:
            server = self.fleet.servers.get(instance_id)
            record = records.get(instance_id)
            if instance_id not in members or server is None or server.state not in ("created", "loading", "ready"):
                state = "gone"
            elif record is not None:
                state = record  # ready / warned / gone, as the gateway reads it
            else:
                state = "up, not in the ready set" if server.state == "ready" else "loading"
            states[instance_id] = state
        for instance_id, state in records.items():
            if self._seen.get(f"replica {instance_id}") != state:
                self._seen[f"replica {instance_id}"] = state
                self.note(f"ready set: {instance_id} {state}")
        self.replica_log.append((self.t(now), states, primary))

    def ready_set_records(self) -> dict[str, str]:
        """The state table's ready set (``replica#<id>`` records): instance -> ready / warned / gone. Empty where
        the product keeps none (a single instance before hedged replicas)."""
        from moto.dynamodb.models import dynamodb_backends

        backend = dynamodb_backends[ACCOUNT_ID][REGION]
        table = backend.tables.get(self.stack.table_name)
        if table is None:
            return {}
        records: dict[str, str] = {}
        for hash_key, items in list(table.items.items()):
            if getattr(hash_key, "value", None) != f"group#{self.stack.group}" or not isinstance(items, dict):
                continue
            for range_key, item in list(items.items()):
                sk = getattr(range_key, "value", "")
                if isinstance(sk, str) and sk.startswith("replica#"):
                    state = item.attrs.get("state")
                    records[sk.removeprefix("replica#")] = getattr(state, "value", "?")
        return records

    # delivering to the functions ---------------------------------------------------------------------------
    def _deliver(self) -> None:
        """Run the invocations in flight whose sleep is over, then invoke the handler of every event that reached
        a function's queue, oldest first, up to ``concurrency`` invocations in flight (1: one at a time, events
        wait; 0: Lambda throttled).

        Each invocation runs on a thread of its own, one at a time: it runs until it sleeps (a launch hook polling
        TGI, a terminate hook draining) or ends, while the world waits; its sleep ends at a later tick. So
        invocations overlap as Lambda runs them, none waiting for another to return; ``concurrency`` (None: no
        ceiling) caps each function's executions in flight.
        """
        if threading.get_ident() in self._worker_of:
            return  # an invocation's own path never delivers: the world's loop does
        now = self.clock.now()
        ran = False
        for worker in sorted((w for w in self._workers if w.wake_at <= now), key=lambda w: (w.wake_at, w.seq)):
            self._run(worker)
            ran = True
        while True:
            if self._dirty:
                self._dirty = False
                self._collect()
            if self.chaos is not None:
                for function, event in self.chaos.due(now):
                    self._queues.put(function, event, now)
            queued, expired = self._queues.next(now, self.concurrency)
            for old in expired:
                record = expiry_record(old.function, old.event, old.throttles + 1, now)
                self.sqs.send_message(QueueUrl=self.stack.dlq_url, MessageBody=json.dumps(record))
                self.note(f"{old.function}: event expired unrun after {old.throttles} throttles", "sent to the DLQ")
            if queued is None:
                break
            self._start(queued.function, queued.event)
            ran = True
        if ran and not self._closed:
            self._watch(now)  # what the invocations of this second changed is this second's state too

    def _start(self, function: str, event: dict[str, Any], attempt: int = 1) -> None:
        """A new invocation: it runs until it sleeps or ends."""
        self._seq += 1
        worker = _Worker(function, event, attempt, seq=self._seq)
        self._workers.append(worker)
        self._run(worker)

    def _run(self, worker: _Worker) -> None:
        """Let the invocation run until it sleeps or ends (the world's loop waits meanwhile)."""
        self._parked.clear()
        if worker.thread is None:
            worker.thread = threading.Thread(target=self._invocation, args=(worker,), daemon=True)
            worker.thread.start()
        else:
            worker.resume.set()
        self._parked.wait()
        if worker.done and worker in self._workers:
            self._workers.remove(worker)

    def _invocation(self, worker: _Worker) -> None:
        self._worker_of[threading.get_ident()] = worker
        self._queues.started(worker.function)
        try:
            self.invoke(worker.function, worker.event, worker.attempt)
        except _WorldClosed:
            pass
        finally:
            self._queues.ended(worker.function)
            worker.done = True
            self._worker_of.pop(threading.get_ident(), None)
            self._parked.set()

    def _park(self, seconds: float) -> bool:
        """A sleep of one of the world's invocations: wait until the world's loop has moved the clock on."""
        worker = self._worker_of.get(threading.get_ident())
        if worker is None:
            return False
        worker.wake_at = self.clock.now() + float(seconds)
        worker.resume.clear()
        self._parked.set()
        worker.resume.wait()
        if self._closed:
            raise _WorldClosed
        return True

    def _collect(self) -> None:
        from moto.sqs.models import sqs_backends

        backend = sqs_backends[ACCOUNT_ID][REGION]
        arrived: list[tuple[int, str, dict[str, Any]]] = []
        for function, queue in self.stack.inboxes.items():
            model = backend.queues.get(queue.rsplit("/", 1)[-1])
            if model is not None and not model.approximate_number_of_messages:
                continue  # asking moto's model first spares an API call for every empty queue
            while messages := self.sqs.receive_message(
                QueueUrl=queue, MaxNumberOfMessages=10, AttributeNames=["SentTimestamp"]
            ).get("Messages", []):
                for message in messages:
                    self.sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
                    sent = int(message.get("Attributes", {}).get("SentTimestamp", 0))
                    arrived.append((sent, function, _as_delivered(json.loads(message["Body"]))))
        arrived.sort(key=lambda item: item[0])
        if self.chaos is None:
            for _, function, event in arrived:
                self._queues.put(function, event, self.clock.now())
            return
        for _, function, event in arrived:
            delivery = self.chaos.arrive(self.clock.now(), function, event)
            if delivery.detail_type == "Scheduled Event":
                continue  # a minute's schedule, every minute: only what the scenario is about goes on the timeline
            what = f"{SHORT_NAMES.get(delivery.detail_type, delivery.detail_type)} {delivery.instance_id or ''}".strip()
            if delivery.lost:
                self.note(f"chaos: {what} for {function} lost", "never delivered")
            else:
                delays = ", ".join(f"+{d:.0f} s" for d in sorted(delivery.delays))
                self.note(f"chaos: {what} for {function}", f"delivered {len(delivery.delays)}x ({delays})")

    @property
    def deliveries(self) -> list[dict[str, Any]]:
        """What the chaos did to each event on its way to a function (empty without chaos)."""
        if self.chaos is None:
            return []
        return [d.as_json() | {"at": round(self.t(d.at), 1)} for d in self.chaos.deliveries]

    def invoke(self, function: str, event: dict[str, Any], attempt: int = 1) -> Invocation:
        deps = self.local.deps.get(function)
        started = self.clock.now()
        record = Invocation(function, event, started, started)
        if deps is None:
            record.error = f"no handler for {function}"
        else:
            try:
                record.outcome = self.local.invoke(function, event, self.stack.function_timeout.get(function, 60.0))
            except Exception as error:
                record.error = f"{type(error).__name__}: {error}"[:300]
        record.ended = self.clock.now()
        self.invocations.append(record)
        if self.alarms is not None and deps is not None:
            self.alarms.record_invocation(function, record.ended, bool(record.error))
        self._describe_invocation(record, attempt)
        self._read_alerts()
        if record.error and deps is not None:
            delay = retry_delay(attempt)
            if delay is not None:
                self.at(self.t() + delay, f"retry {function}", lambda: self._start(function, event, attempt + 1))
            else:
                failed = failure_record(function, event, record.error, attempt, record.ended)
                self.sqs.send_message(QueueUrl=self.stack.dlq_url, MessageBody=json.dumps(failed))
                self.note(f"{function}: event sent to the dead-letter queue after {attempt} attempts")
        return record

    def _describe_invocation(self, record: Invocation, attempt: int) -> None:
        event = record.event
        detail = event.get("detail", {}) if isinstance(event.get("detail"), dict) else {}
        about = detail.get("instance-id") or detail.get("EC2InstanceId") or ""
        what = f"{SHORT_NAMES.get(event.get('detail-type', ''), event.get('detail-type', '?'))} {about}".strip()
        took = record.ended - record.started
        timing = f" (took {took:.0f} s)" if took >= 1 else ""
        retry = f" [attempt {attempt}]" if attempt > 1 else ""
        if record.error:
            self.note(f"-> {record.function}: {what}{retry}", f"FAILED {record.error}{timing}")
            return
        outcome = record.outcome
        if record.function == "health" and isinstance(outcome, dict):
            interesting = outcome.get("launches") or not outcome.get("healthy")
            key = (outcome.get("healthy"), outcome.get("serving"))
            if not interesting and self._seen.get("health") == key:
                return
            self._seen["health"] = key
            text = f"healthy={outcome.get('healthy')} serving={outcome.get('serving')}"
            if outcome.get("launches"):
                text += f" launches={outcome['launches']}"
        else:
            text = outcome.get("outcome") if isinstance(outcome, dict) and "outcome" in outcome else str(outcome)
        self.note(f"-> {record.function}: {what}{retry}", f"{text}{timing}")

    def _read_alerts(self) -> None:
        from moto.sqs.models import sqs_backends

        model = sqs_backends[ACCOUNT_ID][REGION].queues.get(self.stack.alert_inbox_url.rsplit("/", 1)[-1])
        if model is not None and not model.approximate_number_of_messages:
            return
        sqs = self.sqs
        while True:
            messages = sqs.receive_message(
                QueueUrl=self.stack.alert_inbox_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
            ).get("Messages", [])
            if not messages:
                return
            for message in messages:
                sqs.delete_message(QueueUrl=self.stack.alert_inbox_url, ReceiptHandle=message["ReceiptHandle"])
                body = json.loads(message["Body"])
                if "Message" in body and "Type" in body:  # an SNS envelope (raw delivery off)
                    body = json.loads(body["Message"])
                alert = {
                    "t": round(self.t(), 1),
                    "event": body.get("event"),
                    "severity": body.get("severity"),
                    "summary": body.get("summary"),
                }
                self.alerts.append(alert)
                self.note(f"alert [{alert['severity']}] {alert['event']}", str(alert["summary"]))

    # what AWS looks like now (read from the embedded AWS's own models: no API call per second) ----------------
    def spot_warning(self, instance_id: str, detail: str = "reclaim in 120 s") -> None:
        """EC2's Spot interruption warning for the instance, put on the bus now."""
        self.note(f"EC2: Spot interruption warning for {instance_id}", detail)
        self.put_event(spot_interruption(instance_id, at=self.clock.now()))

    def spot_reclaim(self, instance_id: str) -> None:
        """Spot takes the instance back (two minutes after its warning, as a rule)."""
        self.note(f"EC2: Spot reclaims {instance_id}")
        self.group.reclaim(instance_id)

    def alarm_transitions(self) -> list[dict[str, Any]]:
        """The stack's alarm state changes so far, as the report lists them: t, alarm, from, to."""
        changes = self.alarms.evaluator.transitions if self.alarms is not None else []
        return [{"t": round(self.t(c.at), 1), "alarm": c.alarm, "from": c.previous, "to": c.state} for c in changes]

    def eip_holder(self) -> str | None:
        from moto.ec2.models import ec2_backends

        addresses = ec2_backends[ACCOUNT_ID][REGION].address_by_allocation([self.stack.eip_allocation_id])
        instance = addresses[0].instance if addresses else None
        return instance.id if instance is not None else None

    def _eip_target(self) -> tuple[str, int] | None:
        from moto.ec2.models import ec2_backends

        addresses = ec2_backends[ACCOUNT_ID][REGION].address_by_allocation([self.stack.eip_allocation_id])
        instance = addresses[0].instance if addresses else None
        if instance is None or instance.state != "running":
            return None
        return instance.private_ip_address, int(self.stack.function_env["lifecycle"]["TGI_PORT"])

    def endpoint(self) -> dict[str, Any]:
        from moto.dynamodb.models import dynamodb_backends

        backend = dynamodb_backends[ACCOUNT_ID][REGION]
        item = backend.get_item(
            self.stack.table_name, {"pk": {"S": f"group#{self.stack.group}"}, "sk": {"S": "endpoint"}}
        )
        if item is None:
            return {}
        deserializer = TypeDeserializer()
        return {k: deserializer.deserialize(v) for k, v in item.to_json()["Attributes"].items()}


def _plain_group(session: Any, stack: DeployedStack) -> None:
    """The baseline: the same group and EIP run by hand, with none of spotkeeper's reactions.

    The rules lose their targets (moto delivers to a disabled rule's targets: removing them is what disabling
    means here), the group loses its lifecycle hooks and Capacity Rebalancing, as the group ops build by hand.
    """
    events = session.client("events")
    for rule in stack.rules:
        events.disable_rule(Name=rule)
        targets = events.list_targets_by_rule(Rule=rule)["Targets"]
        if targets:
            events.remove_targets(Rule=rule, Ids=[t["Id"] for t in targets])
    stack.schedules = [type(rule)(rule.name, rule.period_seconds, ()) for rule in stack.schedules]
    autoscaling = session.client("autoscaling")
    for hook in autoscaling.describe_lifecycle_hooks(AutoScalingGroupName=stack.group)["LifecycleHooks"]:
        autoscaling.delete_lifecycle_hook(AutoScalingGroupName=stack.group, LifecycleHookName=hook["LifecycleHookName"])
    from moto.autoscaling.models import autoscaling_backends

    autoscaling_backends[ACCOUNT_ID][REGION].autoscaling_groups[stack.group].capacity_rebalance = False


def _as_delivered(event: dict[str, Any]) -> dict[str, Any]:
    """moto's SQS target leaves the envelope's ``account`` out; EventBridge always sends it."""
    event.setdefault("account", ACCOUNT_ID)
    return event
