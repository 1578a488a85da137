"""The signal CloudFormation waits for while it creates the stack's group (create mode's CreationPolicy)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from spotkeeper.aws import error_code, error_message
from spotkeeper.observability import logger

# The template's Auto Scaling group (create mode), whose CreationPolicy waits for the first serving instance.
FLEET_GROUP_LOGICAL_ID = "FleetGroup"


class CreationSignal:
    """Tells a stack being created that an instance of its group serves. ``stack_name`` empty: nothing waits
    (attach mode), and nothing is called."""

    def __init__(self, cloudformation: Any, stack_name: str) -> None:
        self._cloudformation = cloudformation
        self.stack_name = stack_name

    def instance_serves(self, instance_id: str) -> bool:
        """True when the waiting stack took the signal. Once the stack exists CloudFormation refuses signals with a
        ValidationError: every later move of the EIP ends there, quietly."""
        if not self.stack_name:
            return False
        try:
            self._cloudformation.signal_resource(
                StackName=self.stack_name,
                LogicalResourceId=FLEET_GROUP_LOGICAL_ID,
                UniqueId=instance_id,
                Status="SUCCESS",
            )
        except ClientError as error:
            if error_code(error) != "ValidationError":
                raise
            logger.debug("stack not waiting for a signal", extra={"why": error_message(error)})
            return False
        logger.info("signalled the stack: first instance serving", extra={"instance_id": instance_id})
        return True
