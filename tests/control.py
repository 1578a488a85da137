"""Test wiring for the control functions: their deps on moto, built by the local world (``spotkeeper_local.world``).

moto keeps launching and terminating the group's instances at once here (the group is not taken over): the
tests turn the group's changes into lifecycle events themselves (``GroupWatcher``).
"""

from __future__ import annotations

from typing import Any

from spotkeeper_local.lifecycle_hooks import LifecycleHooks
from spotkeeper_local.world import World


def control_deps_for(stack: Any, clock: Any = None, tgi: Any = None, hooks: LifecycleHooks | None = None, **env: str):
    world = World.build(
        stack.session, clock, {"lifecycle": stack.env(**env)}, take_over_group=False, tgi=tgi, hooks=hooks
    )
    return world.deps["lifecycle"]


def instance_ids(stack: Any) -> list[str]:
    return [i["InstanceId"] for i in stack.group_description()["Instances"]]
