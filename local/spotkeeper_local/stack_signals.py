"""CloudFormation's SignalResource, which moto does not implement.

Stands in for what AWS documents: while a resource with a CreationPolicy waits, a SUCCESS signal counts towards
its Count; once it got them (the resource is CREATE_COMPLETE) every further signal is refused with a
ValidationError. The drill deploys the stack on moto, so the group is already created: the first signal of each
resource is the one the waiting stack would have received, later ones are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from spotkeeper_local.lifecycle_hooks import answer_locally


@dataclass
class StackSignals:
    received: list[dict[str, str]] = field(default_factory=list)
    # An error code to answer the next signal with (e.g. AccessDenied), as a test's fault.
    fail_next_with: str | None = None

    def signal(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.fail_next_with:
            code, self.fail_next_with = self.fail_next_with, None
            raise ClientError({"Error": {"Code": code, "Message": code}}, "SignalResource")
        resource = (params["StackName"], params["LogicalResourceId"])
        if any((s["StackName"], s["LogicalResourceId"]) == resource for s in self.received):
            raise ClientError(
                {
                    "Error": {
                        "Code": "ValidationError",
                        "Message": f"Resource {resource[1]} is in CREATE_COMPLETE state and cannot be signaled",
                    }
                },
                "SignalResource",
            )
        self.received.append({k: str(params[k]) for k in ("StackName", "LogicalResourceId", "UniqueId", "Status")})
        return {}

    def install(self, cloudformation_client: Any) -> None:
        answer_locally(cloudformation_client, "SignalResource", self.signal, service="cloudformation")
