"""One emulated TGI server per EC2 instance of the embedded AWS, each on its own loopback address.

The control functions reach TGI at an instance's private IP; locally that IP is mapped to the emulator
started for the instance, so the same TgiClient code runs unchanged. With ``port`` set (the local drill, whose
instances get loopback private IPs from the embedded EC2), each emulator listens on the instance's own private
IP and that port, so no mapping is needed at all.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

from spotkeeper.tgi import TgiClient
from spotkeeper_local.tgi_emulator import TgiEmulator

_hosts = itertools.count(2)
_hosts_lock = threading.Lock()


def next_loopback_host() -> str:
    """A fresh 127.0.x.y address, so that every emulated instance looks like its own host."""
    with _hosts_lock:
        n = next(_hosts)
    return f"127.0.{(n // 250) % 250}.{2 + n % 250}"


class EmulatedInstances:
    def __init__(
        self,
        ec2: Any,
        model_id: str,
        clock: Any,
        load_seconds: float | Callable[[str], float] = 0.0,
        port: int | None = None,
    ) -> None:
        self._ec2 = ec2
        self.model_id = model_id
        self.clock = clock
        self._load_seconds = load_seconds
        self.port = port
        self.servers: dict[str, TgiEmulator] = {}
        self._by_address: dict[str, str] = {}
        if hasattr(clock, "on_advance"):
            clock.on_advance(lambda _now: self.poll())

    def load_seconds_for(self, instance_id: str) -> float:
        return self._load_seconds(instance_id) if callable(self._load_seconds) else float(self._load_seconds)

    def boot(self, instance_id: str, load_seconds: float | None = None, model_id: str | None = None) -> TgiEmulator:
        """The instance came up: its TGI container starts loading the model."""
        if instance_id in self.servers:
            return self.servers[instance_id]
        if self.port is not None:
            host, port = self.private_address(instance_id), self.port
            if host is None:
                raise ValueError(f"{instance_id} has no private IP to listen on")
        else:
            host, port = next_loopback_host(), 0
        server = TgiEmulator(
            host=host,
            port=port,
            model_id=model_id or self.model_id,
            load_seconds=self.load_seconds_for(instance_id) if load_seconds is None else load_seconds,
            clock=self.clock.now,
        )
        server.boot()
        server.poll()
        self.servers[instance_id] = server
        address = self.private_address(instance_id)
        if address:
            self._by_address[address] = instance_id
        return server

    def private_address(self, instance_id: str) -> str | None:
        reservations = self._ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return next((i.get("PrivateIpAddress") for r in reservations for i in r["Instances"]), None)

    def kill(self, instance_id: str) -> None:
        """The instance is gone (reclaimed or terminated)."""
        server = self.servers.get(instance_id)
        if server is not None:
            server.kill()

    def poll(self) -> None:
        for server in list(self.servers.values()):
            server.poll()

    def url_for(self, address: str) -> str:
        instance_id = self._by_address.get(address)
        if instance_id is None:
            # No emulator for it: a closed port, as an instance whose TGI never started.
            return "http://127.0.0.1:9"
        return self.servers[instance_id].url

    def tgi_client(self, timeout: float = 2.0) -> TgiClient:
        return TgiClient(self.url_for, timeout=timeout)

    def close(self) -> None:
        for server in self.servers.values():
            server.kill()
