"""What a reaction needs, wired once per process: the same logic runs in Lambda, tests and the drill."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from spotkeeper.alerts import AlertPublisher
from spotkeeper.aws import AwsClients, LazyClient
from spotkeeper.clock import Clock, WallClock
from spotkeeper.fleet import Fleet
from spotkeeper.settings import ControlEnv, control_env
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
        return cls(
            env=env,
            clients=clients,
            fleet=Fleet(
                LazyClient(lambda: clients.autoscaling),
                LazyClient(lambda: clients.ec2),
                env.group_name,
                env.eip_allocation_id,
            ),
            state=StateStore(LazyClient(lambda: clients.table(env.state_table_name))),
            alerts=AlertPublisher(LazyClient(lambda: clients.sns), env.alert_topic_arn, env.group_name),
            tgi=tgi or TgiClient.on_port(env.tgi_port, timeout=env.probe_timeout_seconds),
            clock=clock or WallClock(),
        )


@cache
def control_deps() -> ControlDeps:
    """The Lambda wiring: environment, real clients, wall clock. Built on the first event."""
    return ControlDeps.build(control_env())
