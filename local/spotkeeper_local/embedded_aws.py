"""The drill's embedded AWS: a moto server on loopback, with the stack deployed into it from ``template.yaml``.

The SAM template is translated with ``samtranslator`` (as ``sam deploy`` would) and the resources moto's
CloudFormation can create are deployed with ``create_stack``: state table, alert topic and key, queues,
security groups, Elastic IP, IAM roles, launch template, the Spot-first Auto Scaling group, EventBridge rules.
What moto cannot run is left out and played by the local runtime instead (``NOT_DEPLOYED`` says who plays it).

The EventBridge rules keep the template's patterns and schedules; only their Lambda targets become one SQS
queue per function, because moto matches rules faithfully but cannot invoke a Lambda target. The drill puts
events on the bus, drains each function's queue and invokes that function's real handler in-process: an event
reaches exactly the handlers the template wires it to.

Each function's environment is resolved by CloudFormation itself: the template gets one output per variable.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spotkeeper_local.report import DrillError

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"
ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
# moto gives instances private IPs from their subnet: a loopback CIDR makes every instance's private IP an
# address this machine can bind, so each instance's TGI emulator listens on the instance's own private IP.
VPC_CIDR = "127.1.0.0/16"
SUBNET_CIDR = "127.1.1.0/24"
# Further subnets, one per further zone (us-east-1b, ...): the hedged replicas' group spreads over them.
ZONE_SUBNET_CIDR = "127.1.{}.0/24"
MAX_ZONES = 4
# moto resolves AWS::SSM::Parameter::Value parameters in its own SSM, where the public /aws/service/...
# names are reserved: the AMI parameter's default points at a parameter the drill creates instead.
AMI_PARAMETER = "/spotkeeper/drill/ami-id"
DRILL_AMI = "ami-12c6146b"  # one of moto's built-in AMIs

DEPLOYED_TYPES = frozenset(
    {
        "AWS::DynamoDB::Table",
        "AWS::KMS::Key",
        "AWS::KMS::Alias",
        "AWS::SNS::Topic",
        "AWS::SQS::Queue",
        "AWS::EC2::SecurityGroup",
        "AWS::EC2::SecurityGroupIngress",
        "AWS::EC2::EIP",
        "AWS::EC2::LaunchTemplate",
        "AWS::IAM::Role",
        "AWS::IAM::InstanceProfile",
        "AWS::AutoScaling::AutoScalingGroup",
        "AWS::AutoScaling::LifecycleHook",
        "AWS::Events::Rule",
    }
)

# What is not deployed into moto, and what plays it in the drill.
NOT_DEPLOYED: dict[str, str] = {
    "AWS::Lambda::Function": "handlers run in-process (spotkeeper_local.lambda_runtime), one SQS inbox per function",
    "AWS::Lambda::LayerVersion": "the layer is on PYTHONPATH",
    "AWS::Lambda::Permission": "no Lambda to invoke",
    "AWS::Lambda::EventInvokeConfig": "the drill retries a failed invocation twice, then sends it to the DLQ",
    "AWS::Logs::LogGroup": "function logs go to build/drill/lambda.log",
    "AWS::ApiGateway::RestApi": "the gateway app is served by uvicorn on loopback (no authorizer, no usage plan)",
    "AWS::ApiGateway::Stage": "see RestApi",
    "AWS::ApiGateway::Deployment": "see RestApi",
    "AWS::ApiGateway::UsagePlan": "see RestApi",
    "AWS::CloudWatch::Alarm": "moto never evaluates alarms: spotkeeper_local.cloudwatch_alarms does, and puts their "
    "state changes on the bus",
    "AWS::CloudWatch::Dashboard": "nothing to show it",
    "AWS::FIS::ExperimentTemplate": "the drill plays the Spot interruption itself (--stack runs it on AWS)",
    "AWS::SNS::Subscription": "moto's CloudFormation does not support it: the drill subscribes its alert inbox the "
    "way AlertSqsSubscription declares (AlertSqsArn)",
    "AWS::SQS::QueuePolicy": "moto's CloudFormation does not support it (and moto does not enforce policies)",
    "AWS::EC2::SecurityGroupEgress": "moto's CloudFormation does not support it (loopback has no firewall)",
    # Fast start (ModelRevision / GhcrCredentialSecretArn; off by default): they serve the GPU instance's user data,
    # which the drill does not run (tests/test_bootstrap.py runs it against moto); launch times come from
    # spotkeeper_local.launch_time.
    "AWS::S3::Bucket": "the weights cache is read by the instance's user data only",
    "AWS::S3::BucketPolicy": "see AWS::S3::Bucket",
    "AWS::IAM::RolePolicy": "grants of the instance role, used by the instance's user data only",
    "AWS::ECR::PullThroughCacheRule": "the image cache is used by the instance's user data only",
}

# The outputs the drill reads, and the rules' retry settings it honours, come from the template itself.
_OUTPUTS = ("EipAllocationId", "EipAddress", "GroupName", "StateTableName", "AlertTopicArn", "DlqUrl")
_OUTPUT_KEY = re.compile(r"[^A-Za-z0-9]")


class TemplateError(DrillError):
    """template.yaml could not be translated or deployed into the embedded AWS."""


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    name: str  # the folder under functions/
    timeout: float
    environment: dict[str, Any]  # unresolved, as the translated template has it
    maximum_event_age: float = 21600.0  # its EventInvokeConfig's MaximumEventAgeInSeconds (Lambda's default: 6 h)


@dataclass
class LocalTemplate:
    """The translated template, rewritten for moto: what is deployed, and what each function is."""

    body: dict[str, Any]
    functions: dict[str, FunctionSpec]
    inbox_of: dict[str, str]  # function logical id -> logical id of its SQS inbox
    left_out: dict[str, list[str]]  # resource type -> logical ids not deployed
    env_outputs: dict[str, tuple[str, str]]  # output key -> (function logical id, variable)
    group_logical_id: str | None
    alert_raw_delivery: bool = False  # AlertSqsSubscription's RawMessageDelivery
    alarms: dict[str, Any] = field(default_factory=dict)  # the alarm resources, which cloudwatch_alarms evaluates


@dataclass(frozen=True)
class ScheduleRule:
    name: str
    period_seconds: float
    targets: tuple[str, ...]  # queue URLs


@dataclass
class DeployedStack:
    """What the drill needs to know about the stack it deployed: names, URLs, and the functions' wiring."""

    name: str
    outputs: dict[str, str]
    function_env: dict[str, dict[str, str]]  # function folder name -> resolved environment
    function_timeout: dict[str, float]
    inboxes: dict[str, str]  # function folder name -> SQS queue URL of its rule targets
    schedules: list[ScheduleRule]
    rules: list[str]
    alert_inbox_url: str
    function_event_age: dict[str, float] = field(default_factory=dict)  # folder name -> MaximumEventAgeInSeconds

    @property
    def group(self) -> str:
        return self.outputs["GroupName"]

    @property
    def eip_allocation_id(self) -> str:
        return self.outputs["EipAllocationId"]

    @property
    def table_name(self) -> str:
        return self.outputs["StateTableName"]

    @property
    def topic_arn(self) -> str:
        return self.outputs["AlertTopicArn"]

    @property
    def dlq_url(self) -> str:
        return self.outputs["DlqUrl"]


def _parse_rate(expression: str) -> float:
    match = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)", expression.strip())
    if not match:
        raise TemplateError(f"schedule {expression!r}: only rate(...) expressions are played locally")
    unit = {"minute": 60, "hour": 3600, "day": 86400}[match.group(2).rstrip("s")]
    return float(match.group(1)) * unit


def load_sam_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """template.yaml with CloudFormation's short tags (!Ref, !Sub, ...) read as their long forms."""
    from samtranslator.yaml_helper import yaml_parse

    try:
        return yaml_parse(path.read_text())
    except Exception as error:  # yaml errors carry the line; keep them
        raise TemplateError(f"{path}: not a readable template: {error}") from error


class _NoIamPolicyLoader:
    """samtranslator asks for AWS managed policy ARNs by name; the template names none, so nothing is looked up."""

    def load(self) -> dict[str, str]:
        return {}


def translate(template: dict[str, Any], region: str = REGION) -> dict[str, Any]:
    """The SAM transform, as ``sam deploy`` runs it after ``sam package`` uploaded the code."""
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.translator.transform import transform

    packaged = json.loads(json.dumps(template))
    for logical_id, resource in packaged.get("Resources", {}).items():
        properties = resource.setdefault("Properties", {})
        if resource.get("Type") == "AWS::Serverless::Function":
            properties["CodeUri"] = f"s3://spotkeeper-local/{logical_id}.zip"
        elif resource.get("Type") == "AWS::Serverless::LayerVersion":
            properties["ContentUri"] = f"s3://spotkeeper-local/{logical_id}.zip"
    os.environ.setdefault("AWS_DEFAULT_REGION", region)
    # samtranslator logs every feature toggle it does not know; that is noise here.
    logging.getLogger("samtranslator").setLevel(logging.ERROR)
    try:
        return transform(packaged, {}, _NoIamPolicyLoader())
    except InvalidDocumentException as error:
        problems = "; ".join(str(cause) for cause in error.causes)
        raise TemplateError(f"SAM transform failed: {problems}") from error


def _function_folders(template: dict[str, Any]) -> dict[str, str]:
    folders = {}
    for logical_id, resource in template.get("Resources", {}).items():
        if resource.get("Type") == "AWS::Serverless::Function":
            code_uri = str(resource.get("Properties", {}).get("CodeUri", ""))
            folders[logical_id] = Path(code_uri.rstrip("/")).name
    return folders


def local_template(sam_template: dict[str, Any]) -> LocalTemplate:
    """Translate, keep what moto deploys, point rule targets at per-function queues, expose function env."""
    folders = _function_folders(sam_template)
    translated = translate(sam_template)
    resources: dict[str, Any] = translated["Resources"]
    event_age = {
        resource["Properties"]["FunctionName"].get("Ref"): float(resource["Properties"]["MaximumEventAgeInSeconds"])
        for resource in resources.values()
        if resource["Type"] == "AWS::Lambda::EventInvokeConfig"
        and isinstance(resource["Properties"].get("FunctionName"), dict)
        and "MaximumEventAgeInSeconds" in resource["Properties"]
    }
    functions = {
        logical_id: FunctionSpec(
            logical_id=logical_id,
            name=folders.get(logical_id, logical_id),
            timeout=float(resource["Properties"].get("Timeout", 3)),
            environment=dict(resource["Properties"].get("Environment", {}).get("Variables", {})),
            maximum_event_age=event_age.get(logical_id, 21600.0),
        )
        for logical_id, resource in resources.items()
        if resource["Type"] == "AWS::Lambda::Function"
    }
    kept = {k: v for k, v in resources.items() if v["Type"] in DEPLOYED_TYPES}
    left_out: dict[str, list[str]] = {}
    for logical_id, resource in resources.items():
        if logical_id not in kept:
            left_out.setdefault(resource["Type"], []).append(logical_id)
    unknown = sorted(set(left_out) - set(NOT_DEPLOYED))
    if unknown:
        raise TemplateError(f"template has resource types the drill neither deploys nor plays: {unknown}")

    inbox_of: dict[str, str] = {}
    for resource in kept.values():
        depends = resource.get("DependsOn")
        if depends is not None:
            depends = [depends] if isinstance(depends, str) else depends
            depends = [name for name in depends if name in kept]
            if depends:
                resource["DependsOn"] = depends
            else:
                del resource["DependsOn"]
        if resource["Type"] != "AWS::Events::Rule":
            continue
        for target in resource["Properties"].get("Targets", []):
            arn = target.get("Arn")
            if not (isinstance(arn, dict) and "Fn::GetAtt" in arn and arn["Fn::GetAtt"][0] in functions):
                raise TemplateError(f"rule target {target.get('Id')}: only Lambda targets of this stack are played")
            function_id = arn["Fn::GetAtt"][0]
            inbox = inbox_of.setdefault(function_id, f"{function_id}DrillInbox")
            target["Arn"] = {"Fn::GetAtt": [inbox, "Arn"]}
    for inbox in inbox_of.values():
        kept[inbox] = {"Type": "AWS::SQS::Queue", "Properties": {}}

    body = {key: value for key, value in translated.items() if key not in ("Resources", "Outputs")}
    body["Resources"] = kept
    parameters = body.setdefault("Parameters", {})
    if "AmiSsmParameter" in parameters:
        parameters["AmiSsmParameter"]["Default"] = AMI_PARAMETER
    outputs = {k: v for k, v in translated.get("Outputs", {}).items() if k in _OUTPUTS}
    env_outputs: dict[str, tuple[str, str]] = {}
    for spec in functions.values():
        for variable, value in spec.environment.items():
            key = _OUTPUT_KEY.sub("", f"DrillEnv{spec.logical_id}{variable}")
            outputs[key] = {"Value": value}
            env_outputs[key] = (spec.logical_id, variable)
    group_id = next((k for k, v in kept.items() if v["Type"] == "AWS::AutoScaling::AutoScalingGroup"), None)
    if group_id is not None:
        group = kept[group_id]
        outputs["DrillGroupCapacityRebalance"] = {
            "Value": _as_text(group["Properties"].get("CapacityRebalance", False))
        }
        for index, hook in enumerate(group["Properties"].get("LifecycleHookSpecificationList", [])):
            for name in ("LifecycleHookName", "LifecycleTransition", "HeartbeatTimeout", "DefaultResult"):
                if name in hook:
                    outputs[f"DrillGroupHook{index}{name}"] = {"Value": _as_text(hook[name])}
        if "Condition" in group:
            for key in list(outputs):
                if key.startswith("DrillGroup"):
                    outputs[key]["Condition"] = group["Condition"]
    body["Outputs"] = outputs
    raw = any(
        r["Type"] == "AWS::SNS::Subscription"
        and r.get("Properties", {}).get("Protocol") == "sqs"
        and str(r["Properties"].get("RawMessageDelivery", "false")).lower() == "true"
        for r in resources.values()
    )
    alarms = {k: v for k, v in resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    return LocalTemplate(body, functions, inbox_of, left_out, env_outputs, group_id, raw, alarms)


def _as_text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


class EmbeddedAws:
    """A moto server on 127.0.0.1, and every boto3 client of this process pointed at it."""

    def __init__(self) -> None:
        self._server: Any = None
        self.url = ""
        self._network: tuple[str, str] | None = None
        self._zone_subnets: list[str] = []

    def start(self) -> EmbeddedAws:
        from moto.server import ThreadedMotoServer

        _check_loopback_subnet()

        os.environ.update(
            {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
            }
        )
        os.environ.pop("AWS_PROFILE", None)
        os.environ.pop("AWS_SESSION_TOKEN", None)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        # boto3 reads AWS_ENDPOINT_URL for every client: the Lambda code builds its clients unchanged.
        os.environ["AWS_ENDPOINT_URL"] = self.url
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
            if os.environ.get("AWS_ENDPOINT_URL") == self.url:
                del os.environ["AWS_ENDPOINT_URL"]

    def reset(self) -> None:
        """Forget every resource: each scenario starts from a freshly deployed stack."""
        import httpx

        httpx.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()
        self._network = None
        self._zone_subnets = []

    def session(self) -> Any:
        import boto3

        return boto3.session.Session(region_name=REGION)

    def __enter__(self) -> EmbeddedAws:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # the stack ------------------------------------------------------------------------------------
    def network(self) -> tuple[str, str]:
        """The VPC and subnet the template's parameters name (created once; stacks share them, as in an account)."""
        if self._network is None:
            session = self.session()
            ec2, ssm = session.client("ec2"), session.client("ssm")
            try:
                ssm.put_parameter(Name=AMI_PARAMETER, Value=DRILL_AMI, Type="String", Overwrite=True)
            except Exception as error:
                raise TemplateError(f"could not create the AMI parameter: {error}") from error
            vpc = ec2.create_vpc(CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]
            subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=SUBNET_CIDR, AvailabilityZone=f"{REGION}a")["Subnet"][
                "SubnetId"
            ]
            self._network = (vpc, subnet)
        return self._network

    def fleet_subnets(self, zones: int) -> str:
        """FleetSubnetIds spanning ``zones`` Availability Zones (us-east-1a, b, ...): the first zone's subnet is
        ``network()``'s; each further one is created once, in the same VPC, with a loopback CIDR of its own."""
        if not 1 <= zones <= MAX_ZONES:
            raise DrillError(f"the embedded AWS has 1-{MAX_ZONES} zones for the fleet, not {zones}")
        vpc, first = self.network()
        ec2 = self.session().client("ec2")
        while len(self._zone_subnets) < zones - 1:
            index = len(self._zone_subnets) + 2  # 127.1.2.0/24 in us-east-1b, ...
            zone = f"{REGION}{'abcd'[index - 1]}"
            created = ec2.create_subnet(VpcId=vpc, CidrBlock=ZONE_SUBNET_CIDR.format(index), AvailabilityZone=zone)
            self._zone_subnets.append(created["Subnet"]["SubnetId"])
        return ",".join([first, *self._zone_subnets[: zones - 1]])

    def deploy(
        self,
        template: LocalTemplate,
        stack_name: str,
        parameters: dict[str, str],
    ) -> DeployedStack:
        """Create the stack in the network, then fill moto's gaps in the group."""
        session = self.session()
        sqs = session.client("sqs")
        vpc, subnet = self.network()
        alert_inbox = sqs.create_queue(QueueName=f"{stack_name}-alert-inbox")["QueueUrl"]
        alert_inbox_arn = sqs.get_queue_attributes(QueueUrl=alert_inbox, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        values = {
            "VpcId": vpc,
            "FleetSubnetIds": subnet,
            "FunctionSubnetIds": subnet,
            "AlertSqsArn": alert_inbox_arn,
            **parameters,
        }
        cfn = session.client("cloudformation")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfn.create_stack(
                StackName=stack_name,
                TemplateBody=json.dumps(template.body),
                Parameters=[{"ParameterKey": k, "ParameterValue": str(v)} for k, v in values.items()],
                Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
            )
        stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
        if stack["StackStatus"] != "CREATE_COMPLETE":
            raise TemplateError(f"stack {stack_name}: {stack['StackStatus']} {stack.get('StackStatusReason', '')}")
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        session.client("sns").subscribe(
            TopicArn=outputs["AlertTopicArn"],
            Protocol="sqs",
            Endpoint=alert_inbox_arn,
            Attributes={"RawMessageDelivery": "true" if template.alert_raw_delivery else "false"},
        )
        physical = {
            r["LogicalResourceId"]: r["PhysicalResourceId"]
            for r in cfn.list_stack_resources(StackName=stack_name)["StackResourceSummaries"]
        }

        function_env: dict[str, dict[str, str]] = {}
        for key, (logical_id, variable) in template.env_outputs.items():
            if key in outputs:
                function_env.setdefault(template.functions[logical_id].name, {})[variable] = outputs[key]
        inboxes = {
            template.functions[function_id].name: physical[inbox] for function_id, inbox in template.inbox_of.items()
        }
        events = session.client("events")
        schedules, rules = [], []
        # Paginated: past a page of rules (several scenarios' stacks in one account), a schedule rule left unseen
        # keeps its targets and moto routes every event to them.
        every_rule = [r for page in events.get_paginator("list_rules").paginate() for r in page["Rules"]]
        for rule in every_rule:
            rules.append(rule["Name"])
            if rule.get("ScheduleExpression"):
                targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
                schedules.append(
                    ScheduleRule(
                        rule["Name"],
                        _parse_rate(rule["ScheduleExpression"]),
                        tuple(_queue_url(sqs, t["Arn"]) for t in targets),
                    )
                )
                # moto matches a schedule-only rule against every event put on the bus; the drill fires
                # schedules itself, so their targets are held by the drill rather than by moto's rule.
                if targets:
                    events.remove_targets(Rule=rule["Name"], Ids=[t["Id"] for t in targets])
        if template.group_logical_id and "GroupName" in outputs:
            self._complete_group(session, outputs)
        return DeployedStack(
            name=stack_name,
            outputs={k: v for k, v in outputs.items() if not k.startswith("Drill")},
            function_env=function_env,
            function_timeout={spec.name: spec.timeout for spec in template.functions.values()},
            function_event_age={spec.name: spec.maximum_event_age for spec in template.functions.values()},
            inboxes=inboxes,
            schedules=schedules,
            rules=rules,
            alert_inbox_url=alert_inbox,
        )

    def _complete_group(self, session: Any, outputs: dict[str, str]) -> None:
        """moto's CloudFormation ignores the group's CapacityRebalance and LifecycleHookSpecificationList."""
        autoscaling = session.client("autoscaling")
        group = outputs["GroupName"]
        if outputs.get("DrillGroupCapacityRebalance", "false").lower() == "true":
            # moto's UpdateAutoScalingGroup takes no CapacityRebalance either: set it on moto's model.
            from moto.autoscaling.models import autoscaling_backends

            autoscaling_backends[ACCOUNT_ID][REGION].autoscaling_groups[group].capacity_rebalance = True
        index = 0
        while f"DrillGroupHook{index}LifecycleHookName" in outputs:
            prefix = f"DrillGroupHook{index}"
            hook: dict[str, Any] = {
                "AutoScalingGroupName": group,
                "LifecycleHookName": outputs[f"{prefix}LifecycleHookName"],
                "LifecycleTransition": outputs[f"{prefix}LifecycleTransition"],
            }
            if f"{prefix}HeartbeatTimeout" in outputs:
                hook["HeartbeatTimeout"] = int(float(outputs[f"{prefix}HeartbeatTimeout"]))
            if f"{prefix}DefaultResult" in outputs:
                hook["DefaultResult"] = outputs[f"{prefix}DefaultResult"]
            autoscaling.put_lifecycle_hook(**hook)
            index += 1


def _queue_url(sqs: Any, arn: str) -> str:
    name = arn.rsplit(":", 1)[-1]
    return sqs.get_queue_url(QueueName=name)["QueueUrl"]


def _check_loopback_subnet() -> None:
    """Instances' TGI listens on their private IPs in SUBNET_CIDR: this machine must be able to bind them.

    Linux routes all of 127.0.0.0/8 to the loopback interface; macOS only 127.0.0.1 unless aliases are added.
    """
    import ipaddress
    import socket

    probe = str(next(ipaddress.ip_network(SUBNET_CIDR).hosts()))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((probe, 0))
        except OSError as error:
            raise DrillError(
                f"cannot listen on {probe} ({error}): the drill gives every instance a private IP in "
                f"{SUBNET_CIDR} and serves its TGI there. On macOS add loopback aliases first, e.g. "
                f"'for i in $(seq 1 40); do sudo ifconfig lo0 alias 127.1.1.$i up; done'."
            ) from None
