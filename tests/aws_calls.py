"""Which AWS operations each function makes, recorded from botocore's own events while tests run it.

`CallRecorder.attach(session)` registers on the session's ``provide-client-params`` event, which botocore
emits for every operation of every client built from that session afterwards, before anything can answer in
AWS's place (moto, the stand-ins in ``spotkeeper_local``, the fault injector): a call a stand-in answers
still counts. A call counts only when the code that made it is the product's (the layer, the function
handlers, or Powertools on their behalf); calls the tests or the stand-ins make themselves do not. It is
attributed to the function whose handler (``functions/<name>/app.py``) is on the stack, or to the gateway
for code under ``spotkeeper/gateway`` (served by uvicorn, not by a handler).
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_PRODUCT = (str(ROOT / "layers" / "spotkeeper") + "/", str(ROOT / "functions") + "/", "/aws_lambda_powertools/")
_LIBRARIES = ("/botocore/", "/boto3/", "/s3transfer/", __file__)
_HANDLER = re.compile(re.escape(str(ROOT / "functions")) + r"/(\w+)/app\.py$")
_GATEWAY = str(ROOT / "layers" / "spotkeeper" / "spotkeeper" / "gateway") + "/"

# IAM's service prefix for each botocore service the functions use; most are the same name. A service not in
# this table stops the recording: look its prefix up in the Service Authorization Reference
# (https://docs.aws.amazon.com/service-authorization/latest/reference/reference_policies_actions-resources-contextkeys.html)
# and add it.
IAM_PREFIX = {
    "autoscaling": "autoscaling",
    "cloudformation": "cloudformation",
    "cloudwatch": "cloudwatch",
    "dynamodb": "dynamodb",
    "ec2": "ec2",
    "events": "events",
    "lambda": "lambda",
    "logs": "logs",
    "pricing": "pricing",
    "secretsmanager": "secretsmanager",
    "sns": "sns",
    "sqs": "sqs",
    "ssm": "ssm",
    "elbv2": "elasticloadbalancing",
    "stepfunctions": "states",
}
# The few operations whose IAM action has another name than the API operation.
ACTION_FOR_OPERATION = {
    ("lambda", "Invoke"): "lambda:InvokeFunction",
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "HeadObject"): "s3:GetObject",
    ("s3", "HeadBucket"): "s3:ListBucket",
}


def iam_action(service_name: str, operation: str) -> str:
    if (service_name, operation) in ACTION_FOR_OPERATION:
        return ACTION_FOR_OPERATION[(service_name, operation)]
    if service_name not in IAM_PREFIX:
        raise KeyError(f"no IAM prefix known for botocore service {service_name!r}: add it to IAM_PREFIX")
    return f"{IAM_PREFIX[service_name]}:{operation}"


class CallRecorder:
    """Every AWS operation the product made, as IAM actions, per function."""

    def __init__(self) -> None:
        self.calls: dict[str, set[str]] = defaultdict(set)
        self.unattributed: set[str] = set()
        self._attached: list[Any] = []
        self._paused = False

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Set-up a test does through product code (e.g. a state record) without it counting as a function's."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def attach(self, session: Any) -> Any:
        """Record the calls of every client later built from ``session`` (a boto3 or botocore session)."""
        session.events.register("provide-client-params", self._record, unique_id=f"call-recorder-{id(self)}")
        self._attached.append(session)
        return session

    def _record(self, model: Any, **_: Any) -> None:
        if self._paused:
            return
        frame = sys._getframe(1)
        caller: str | None = None
        function: str | None = None
        while frame is not None:
            filename = frame.f_code.co_filename
            if caller is None and not any(part in filename for part in _LIBRARIES):
                caller = filename
            match = _HANDLER.search(filename)
            if match:
                function = match.group(1)
                break
            if filename.startswith(_GATEWAY):
                function = "gateway"
            frame = frame.f_back
        if caller is None or not any(part in caller for part in _PRODUCT):
            return  # a test, a stand-in or moto set-up calling AWS itself
        action = iam_action(model.service_model.service_name, model.name)
        if function is None:
            self.unattributed.add(action)
        else:
            self.calls[function].add(action)


@contextmanager
def recording_new_sessions(recorder: CallRecorder) -> Iterator[None]:
    """Record the calls of clients built from every boto3 session created meanwhile (a function that builds its
    own session, as the gateway and the authorizer do in Lambda)."""
    import boto3.session

    original = boto3.session.Session

    class RecordedSession(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            recorder.attach(self)

    boto3.session.Session = RecordedSession  # type: ignore[misc]
    try:
        yield
    finally:
        boto3.session.Session = original  # type: ignore[misc]
