"""What a reaction needs, wired once per process: the same logic runs in Lambda, tests and the drill.

The one place that builds AWS adapters: ``logic/`` receives a ``ControlDeps`` or ``CapacityDeps`` and never
imports an adapter itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from spotkeeper.alerts import AlertPublisher
from spotkeeper.aws import AwsClients, LazyClient
from spotkeeper.capacity_journal import CapacityJournal
from spotkeeper.capacity_policy import CapacityPolicy
from spotkeeper.clock import Clock, WallClock
from spotkeeper.fleet import Fleet
from spotkeeper.settings import CapacityEnv, ControlEnv, capacity_env, control_env
from spotkeeper.spot_market import SpotMarket
from spotkeeper.stack_signal import CreationSignal
from spotkeeper.state import StateStore
from spotkeeper.tgi import TgiClient


@dataclass
class ControlDeps:
    env: ControlEnv
    clients: AwsClients
    fleet: Fleet
    state: StateStore
    alerts: AlertPublisher
    tgi: TgiClient
    clock: Clock
    creation_signal: CreationSignal

    @property
    def group(self) -> str:
        return self.env.group_name

    @classmethod
    def build(
        cls,
        env: ControlEnv,
        clients: AwsClients | None = None,
        tgi: TgiClient | None = None,
        clock: Clock | None = None,
    ) -> ControlDeps:
        clients = clients or AwsClients()
        clock = clock or WallClock()
        state = StateStore(LazyClient(lambda: clients.table(env.state_table_name)))
        return cls(
            env=env,
            clients=clients,
            fleet=Fleet(
                LazyClient(lambda: clients.autoscaling),
                LazyClient(lambda: clients.ec2),
                env.group_name,
                env.eip_allocation_id,
            ),
            state=state,
            alerts=_alert_publisher(clients, env, state, clock),
            tgi=tgi or TgiClient.on_port(env.tgi_port, timeout=env.probe_timeout_seconds),
            clock=clock,
            creation_signal=CreationSignal(LazyClient(lambda: clients.cloudformation), env.creation_signal_stack),
        )


def _alert_publisher(clients: AwsClients, env: ControlEnv, state: StateStore, clock: Clock) -> AlertPublisher:
    """The topic, and the state table's short history of what was sent (``spotkeeper status`` shows it)."""
    return AlertPublisher(
        LazyClient(lambda: clients.sns),
        env.alert_topic_arn,
        env.group_name,
        record=lambda alert: state.record_alert(
            env.group_name, clock.now(), alert.event, alert.severity, alert.subject[:500]
        ),
    )


@cache
def control_deps() -> ControlDeps:
    """The Lambda wiring: environment, real clients, wall clock. Built on the first event."""
    return ControlDeps.build(control_env())


@dataclass
class CapacityDeps:
    env: CapacityEnv
    clients: AwsClients
    state: StateStore
    alerts: AlertPublisher
    policy: CapacityPolicy
    market: SpotMarket
    journal: CapacityJournal
    clock: Clock

    @property
    def group(self) -> str:
        return self.env.group_name

    @classmethod
    def build(cls, env: CapacityEnv, clients: AwsClients | None = None, clock: Clock | None = None) -> CapacityDeps:
        clients = clients or AwsClients()
        clock = clock or WallClock()
        state = StateStore(LazyClient(lambda: clients.table(env.state_table_name)))
        return cls(
            env=env,
            clients=clients,
            state=state,
            alerts=_alert_publisher(clients, env, state, clock),
            policy=CapacityPolicy(
                LazyClient(lambda: clients.autoscaling), LazyClient(lambda: clients.ec2), env.group_name
            ),
            market=SpotMarket(LazyClient(lambda: clients.ec2)),
            journal=CapacityJournal(LazyClient(lambda: clients.table(env.state_table_name)), env.group_name, clock.now),
            clock=clock,
        )


@cache
def capacity_deps() -> CapacityDeps:
    """The capacity function's Lambda wiring: environment, real clients, wall clock. Built on the first event."""
    return CapacityDeps.build(capacity_env())
