"""Test wiring for the control functions: deps on moto with the lifecycle stand-in installed."""

from __future__ import annotations

from typing import Any

from spotkeeper.aws import AwsClients
from spotkeeper.deps import ControlDeps
from spotkeeper.settings import ControlEnv
from spotkeeper_local.lifecycle_hooks import LifecycleHooks


def control_deps_for(stack: Any, clock: Any = None, tgi: Any = None, hooks: LifecycleHooks | None = None, **env: str):
    clients = AwsClients(stack.session)
    if hooks is not None:
        hooks.install(clients.autoscaling)
    return ControlDeps.build(ControlEnv.from_environ(stack.env(**env)), clients=clients, tgi=tgi, clock=clock)


def instance_ids(stack: Any) -> list[str]:
    return [i["InstanceId"] for i in stack.group_description()["Instances"]]
