"""``spotkeeper preflight``: what a first deploy of a GPU Spot stack usually trips on, checked before ``sam deploy``.

Each check gives a verdict (ok / warn / FAIL), what it found and what to do. The command exits 0 only when no check
failed: a warning is something a deploy survives (a replacement may wait for quota, a zone is unused).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from spotkeeper_ops.params import Deploy

OK, WARN, FAIL = "ok", "warn", "FAIL"

# Service Quotas codes of EC2's vCPU-based instance limits (service code "ec2"), by instance family class.
# Spot: "All <class> Spot Instance Requests"; on-demand: "Running On-Demand <class> instances".
QUOTAS = {
    "G and VT": {"spot": "L-3819A6DF", "on-demand": "L-DB2E81BA", "families": re.compile(r"^(g|vt)\d")},
    "P": {"spot": "L-7212CCBC", "on-demand": "L-417A185B", "families": re.compile(r"^p\d")},
    "Standard": {"spot": "L-34B43A08", "on-demand": "L-1216C47A", "families": re.compile(r"^[acdhimrtz]\d")},
}

# What the VPC-attached functions (lifecycle, health, gateway) call. Without a NAT route each needs an endpoint:
# interface endpoints with private DNS, DynamoDB's gateway endpoint on the subnet's route table (or interface).
FUNCTION_SERVICES = ("autoscaling", "ec2", "dynamodb", "sns", "cloudformation", "xray")
LWA_ACCOUNT = "753240598075"
HUB = "https://huggingface.co"
# Lambda keeps at least this many of the account's concurrent executions unreserved: PutFunctionConcurrency (what
# CloudFormation calls for ReservedConcurrentExecutions) is refused with InvalidParameterValueException when a
# reservation would leave fewer ("... decreases account's UnreservedConcurrentExecution below its minimum value of
# [100]"). https://docs.aws.amazon.com/lambda/latest/api/API_PutFunctionConcurrency.html
MIN_UNRESERVED_CONCURRENCY = 100
LAMBDA_CONCURRENCY_QUOTA = "L-B99A9384"  # Service Quotas, service code "lambda": Concurrent executions
GATEWAY_FUNCTION = "GatewayFunction"  # the template's logical id of the one function that reserves concurrency


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str
    detail: str
    fix: str = ""


@dataclass
class Clients:
    ec2: Any
    ssm: Any
    secretsmanager: Any
    service_quotas: Any
    lambda_: Any
    kms: Any
    autoscaling: Any
    cloudformation: Any

    @classmethod
    def from_session(cls, session: Any) -> Clients:
        return cls(
            ec2=session.client("ec2"),
            ssm=session.client("ssm"),
            secretsmanager=session.client("secretsmanager"),
            service_quotas=session.client("service-quotas"),
            lambda_=session.client("lambda"),
            kms=session.client("kms"),
            autoscaling=session.client("autoscaling"),
            cloudformation=session.client("cloudformation"),
        )


# (url, token or None) -> (HTTP status, the Hub's X-Error-Code header or "")
HubProbe = Callable[[str, str | None], tuple[int, str]]


def hub_probe(url: str, token: str | None) -> tuple[int, str]:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.head(url, headers=headers, follow_redirects=False, timeout=15)
    return response.status_code, response.headers.get("x-error-code", "")


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


# ---------------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------------
def check_quotas(deploy: Deploy, clients: Clients) -> list[Check]:
    types = deploy.list("InstanceTypes")
    described = clients.ec2.describe_instance_types(InstanceTypes=types)["InstanceTypes"]
    vcpus = {t["InstanceType"]: t["VCpuInfo"]["DefaultVCpus"] for t in described}
    checks = []
    for name, quota in QUOTAS.items():
        members = {t: vcpus[t] for t in types if t in vcpus and quota["families"].match(t)}
        if not members:
            continue
        smallest, largest = min(members.values()), max(members.values())
        for market in ("spot", "on-demand"):
            value = _quota_value(clients, quota[market])
            label = f"{market} vCPU quota, {name} instances ({quota[market]})"
            increase = (
                f"request an increase of {quota[market]} to at least {2 * largest} in Service Quotas "
                f"(aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {quota[market]} "
                f"--desired-value {2 * largest})"
            )
            if value is None:
                checks.append(Check(label, WARN, "could not read the quota", "check it in the Service Quotas console"))
            elif value < smallest:
                what = "no instance can launch" if market == "spot" else "the on-demand fallback cannot launch"
                checks.append(
                    Check(label, FAIL, f"{value:g} vCPUs < {smallest} for the smallest type: {what}", increase)
                )
            elif value < 2 * largest:
                checks.append(
                    Check(
                        label,
                        WARN,
                        f"{value:g} vCPUs: a replacement launched alongside the instance it replaces needs "
                        f"{2 * largest}; it may wait for quota (running instances count too)",
                        increase,
                    )
                )
            else:
                checks.append(Check(label, OK, f"{value:g} vCPUs (needs {2 * largest}, running instances count too)"))
    unknown = [t for t in types if not any(q["families"].match(t) for q in QUOTAS.values())]
    if unknown:
        checks.append(Check("vCPU quota", WARN, f"no known quota class for {', '.join(unknown)}", "check by hand"))
    missing = [t for t in types if t not in vcpus]
    if missing:
        checks.append(
            Check(
                "instance types", FAIL, f"EC2 does not know {', '.join(missing)}", "fix InstanceTypes (e.g. g5.2xlarge)"
            )
        )
    return checks


def _quota_value(clients: Clients, code: str) -> float | None:
    for call in (clients.service_quotas.get_service_quota, clients.service_quotas.get_aws_default_service_quota):
        try:
            return float(call(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
        except ClientError as error:
            if _code(error) not in {"NoSuchResourceException", "ResourceNotFoundException"}:
                raise
    return None


def _subnets(deploy: Deploy, clients: Clients, parameter: str) -> tuple[list[dict[str, Any]], Check | None]:
    ids = deploy.list(parameter)
    if not ids:
        return [], Check(parameter, FAIL, "empty", f"pass {parameter}=subnet-...,subnet-...")
    try:
        subnets = clients.ec2.describe_subnets(SubnetIds=ids)["Subnets"]
    except ClientError as error:
        return [], Check(parameter, FAIL, f"{error}", f"fix {parameter}: subnets of VpcId in this region")
    outside = [s["SubnetId"] for s in subnets if s["VpcId"] != deploy.parameters.get("VpcId")]
    if outside:
        return subnets, Check(parameter, FAIL, f"{', '.join(outside)} not in VpcId", "use subnets of VpcId")
    return subnets, None


def check_offerings(deploy: Deploy, clients: Clients) -> list[Check]:
    subnets, problem = _subnets(deploy, clients, "FleetSubnetIds")
    if problem:
        return [problem]
    zones = {s["AvailabilityZone"] for s in subnets}
    types = deploy.list("InstanceTypes")
    offered: dict[str, set[str]] = {t: set() for t in types}
    paginator = clients.ec2.get_paginator("describe_instance_type_offerings")
    for page in paginator.paginate(
        LocationType="availability-zone",
        Filters=[{"Name": "instance-type", "Values": types}, {"Name": "location", "Values": sorted(zones)}],
    ):
        for offering in page["InstanceTypeOfferings"]:
            offered.setdefault(offering["InstanceType"], set()).add(offering["Location"])
    usable = {t: sorted(z) for t, z in offered.items() if z}
    nowhere = [t for t in types if not offered.get(t)]
    name = "instance types offered in the fleet subnets' zones"
    if not usable:
        return [
            Check(name, FAIL, f"none of {', '.join(types)} in {', '.join(sorted(zones))}", "add subnets in other zones")
        ]
    detail = "; ".join(f"{t}: {', '.join(z)}" for t, z in usable.items())
    if nowhere:
        return [Check(name, WARN, f"{detail}; not offered: {', '.join(nowhere)}", "drop them or add subnets")]
    single = len(zones) == 1
    return [Check(name, WARN if single else OK, detail, "more zones widen the Spot pool" if single else "")]


def _route_table(clients: Clients, subnet: dict[str, Any]) -> dict[str, Any] | None:
    ec2 = clients.ec2
    tables = ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": [subnet["SubnetId"]]}])
    if tables["RouteTables"]:
        return tables["RouteTables"][0]
    main = ec2.describe_route_tables(
        Filters=[{"Name": "vpc-id", "Values": [subnet["VpcId"]]}, {"Name": "association.main", "Values": ["true"]}]
    )["RouteTables"]
    return main[0] if main else None


def _default_route(table: dict[str, Any] | None) -> dict[str, Any] | None:
    for route in (table or {}).get("Routes", []):
        if route.get("DestinationCidrBlock") == "0.0.0.0/0" and route.get("State", "active") == "active":
            return route
    return None


def check_fleet_internet(deploy: Deploy, clients: Clients) -> list[Check]:
    subnets, problem = _subnets(deploy, clients, "FleetSubnetIds")
    if problem:
        return []  # reported by the offerings check
    private = []
    for subnet in subnets:
        route = _default_route(_route_table(clients, subnet))
        if not route or not str(route.get("GatewayId", "")).startswith("igw-"):
            private.append(subnet["SubnetId"])
    name = "fleet subnets reach the internet (TGI image, model weights)"
    if private:
        return [
            Check(
                name,
                FAIL,
                f"no internet gateway route in {', '.join(private)}",
                "FleetSubnetIds must be public subnets (0.0.0.0/0 -> igw-...)",
            )
        ]
    return [Check(name, OK, "0.0.0.0/0 -> internet gateway in every fleet subnet")]


def check_function_routes(deploy: Deploy, clients: Clients, region: str) -> list[Check]:
    subnets, problem = _subnets(deploy, clients, "FunctionSubnetIds")
    if problem:
        return [problem]
    vpc = deploy.parameters.get("VpcId", "")
    endpoints = clients.ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["VpcEndpoints"]
    checks = []
    for subnet in subnets:
        table = _route_table(clients, subnet)
        route = _default_route(table)
        name = f"function subnet {subnet['SubnetId']} reaches the AWS APIs"
        if route and str(route.get("NatGatewayId", "")).startswith("nat-"):
            checks.append(Check(name, OK, f"0.0.0.0/0 -> {route['NatGatewayId']}"))
            continue
        if route and str(route.get("GatewayId", "")).startswith("igw-"):
            checks.append(
                Check(
                    name,
                    FAIL,
                    "a public subnet (0.0.0.0/0 -> internet gateway): Lambda network interfaces never get a public "
                    "IP, so the functions could reach nothing",
                    "use private subnets with a NAT gateway route, or add VPC endpoints",
                )
            )
            continue
        missing = [
            service
            for service in FUNCTION_SERVICES
            if not _endpoint_serves(endpoints, f"com.amazonaws.{region}.{service}", subnet, table)
        ]
        if not missing:
            checks.append(Check(name, OK, "VPC endpoints for every service the functions call"))
        elif route:
            target = next((v for k, v in route.items() if k.endswith("Id") and k != "DestinationCidrBlock"), "?")
            checks.append(
                Check(
                    name,
                    WARN,
                    f"0.0.0.0/0 -> {target} (not a NAT gateway: cannot verify); no endpoint for {', '.join(missing)}",
                    "make sure that route reaches the internet",
                )
            )
        else:
            checks.append(
                Check(
                    name,
                    FAIL,
                    f"no NAT route and no VPC endpoint for {', '.join(missing)}",
                    "add a NAT gateway route, or VPC endpoints for: "
                    + ", ".join(f"com.amazonaws.{region}.{s}" for s in missing),
                )
            )
    return checks


def _endpoint_serves(endpoints: list[dict[str, Any]], service: str, subnet: dict, table: dict | None) -> bool:
    for endpoint in endpoints:
        if endpoint["ServiceName"] != service or endpoint.get("State", "available").lower() != "available":
            continue
        if endpoint.get("VpcEndpointType") == "Gateway":
            if table and table["RouteTableId"] in endpoint.get("RouteTableIds", []):
                return True
        elif endpoint.get("PrivateDnsEnabled"):
            return True
    return False


def check_token_and_model(deploy: Deploy, clients: Clients, hub: HubProbe) -> list[Check]:
    checks = []
    model = deploy.parameters.get("ModelId", "")
    secret_arn = deploy.parameters.get("HfTokenSecretArn", "")
    token = None
    if secret_arn:
        secret_check, token = _read_token(deploy, clients, secret_arn)
        checks += secret_check
        if token is None:
            return checks
    status, error_code = hub(f"{HUB}/{model}/resolve/main/config.json", token)
    name = f"model {model} downloadable from the Hugging Face Hub"
    if status in (200, 302, 307):
        checks.append(Check(name, OK, "with the token" if token else "no token needed"))
    elif error_code == "GatedRepo" or (status in (401, 403) and token):
        if token:
            fix = "accept the model's license on its Hub page with the token's account, or use a token with read access"
            checks.append(Check(name, FAIL, f"gated, and the token has no access (HTTP {status})", fix))
        else:
            fix = "store an access token in Secrets Manager and pass HfTokenSecretArn=<arn> ModelIsGated=true"
            checks.append(Check(name, FAIL, "gated: every launch would be abandoned without a token", fix))
    else:
        checks.append(Check(name, FAIL, f"HTTP {status} {error_code}".strip(), "check ModelId (owner/name, case)"))
    if deploy.parameters.get("ModelIsGated") == "true" and not secret_arn:
        checks.append(Check("ModelIsGated", FAIL, "true without HfTokenSecretArn", "pass HfTokenSecretArn"))
    return checks


def _read_token(deploy: Deploy, clients: Clients, secret_arn: str) -> tuple[list[Check], str | None]:
    name = "Hugging Face token secret"
    try:
        value = clients.secretsmanager.get_secret_value(SecretId=secret_arn)
        described = clients.secretsmanager.describe_secret(SecretId=secret_arn)
    except ClientError as error:
        return [Check(name, FAIL, f"cannot read {secret_arn}: {_code(error)}", "create it, or fix the ARN")], None
    text = (value.get("SecretString") or "").strip()
    token = text
    if text.startswith("{"):
        try:
            token = str(json.loads(text).get("HF_TOKEN", ""))
        except (json.JSONDecodeError, AttributeError):
            token = ""
    if not token:
        return [Check(name, FAIL, "no token in the secret", 'store the token string, or {"HF_TOKEN": "hf_..."}')], None
    checks = [Check(name, OK, "readable (with your credentials; the instance role gets its own grant)")]
    key = described.get("KmsKeyId")
    given = deploy.parameters.get("HfTokenSecretKmsKeyArn", "")
    if key and key != "alias/aws/secretsmanager":
        key_arn = clients.kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"]
        if key_arn != given:
            checks.append(
                Check(
                    "token secret's KMS key",
                    FAIL,
                    f"encrypted with the customer managed key {key_arn}; HfTokenSecretKmsKeyArn is {given or 'empty'}",
                    f"pass HfTokenSecretKmsKeyArn={key_arn} (the instance role needs kms:Decrypt on it)",
                )
            )
    return checks, token


def check_lambda_adapter(deploy: Deploy, clients: Clients, region: str) -> list[Check]:
    version = deploy.parameters.get("LambdaAdapterLayerVersion", "")
    arn = f"arn:aws:lambda:{region}:{LWA_ACCOUNT}:layer:LambdaAdapterLayerArm64:{version}"
    name = "Lambda Web Adapter layer"
    try:
        clients.lambda_.get_layer_version_by_arn(Arn=arn)
    except ClientError as error:
        fix = "pick a LambdaAdapterLayerVersion published in this region (awslabs/aws-lambda-web-adapter releases)"
        return [Check(name, FAIL, f"{arn}: {_code(error)}", fix)]
    return [Check(name, OK, arn)]


def check_ami(deploy: Deploy, clients: Clients) -> list[Check]:
    parameter = deploy.parameters.get("AmiSsmParameter", "")
    name = f"Deep Learning AMI parameter {parameter}"
    try:
        ami = clients.ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
    except ClientError as error:
        fix = "pass AmiSsmParameter=<a public /aws/service/deeplearning/ami/... parameter of this region>"
        return [Check(name, FAIL, f"does not resolve: {_code(error)}", fix)]
    images = clients.ec2.describe_images(ImageIds=[ami])["Images"]
    if not images:
        return [Check(name, FAIL, f"points at {ami}, which this account cannot see", "use another AMI parameter")]
    architecture = images[0].get("Architecture", "")
    types = deploy.list("InstanceTypes")
    described = clients.ec2.describe_instance_types(InstanceTypes=types)["InstanceTypes"]
    wrong = [t["InstanceType"] for t in described if architecture not in t["ProcessorInfo"]["SupportedArchitectures"]]
    if wrong:
        return [Check(name, FAIL, f"{ami} is {architecture}; {', '.join(wrong)} cannot run it", "match the AMI")]
    return [Check(name, OK, f"{ami} ({architecture})")]


def check_attach_targets(deploy: Deploy, clients: Clients) -> list[Check]:
    checks = []
    group = deploy.parameters.get("ExistingGroupName", "")
    found = clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]
    if not found:
        checks.append(Check("existing group", FAIL, f"{group or '(empty)'} not found", "pass ExistingGroupName"))
    elif found[0]["MaxSize"] < 2 and not found[0].get("CapacityRebalance"):
        checks.append(
            Check(
                "existing group",
                WARN,
                f"{group}: MaxSize {found[0]['MaxSize']}, no Capacity Rebalancing: replacements detach the instance",
                "MaxSize 2 lets a replacement launch alongside",
            )
        )
    else:
        checks.append(Check("existing group", OK, group))
    allocation = deploy.parameters.get("ExistingEipAllocationId", "")
    try:
        clients.ec2.describe_addresses(AllocationIds=[allocation])
        checks.append(Check("existing Elastic IP", OK, allocation))
    except ClientError as error:
        checks.append(
            Check("existing Elastic IP", FAIL, f"{allocation}: {_code(error)}", "pass ExistingEipAllocationId")
        )
    return checks


def check_lambda_concurrency(deploy: Deploy, clients: Clients) -> list[Check]:
    """The gateway's reservation must leave the account MIN_UNRESERVED_CONCURRENCY unreserved, or the deploy fails.

    UnreservedConcurrentExecutions already excludes what the stack's gateway reserves today (a redeploy), so that
    reservation is counted back in: the deploy replaces it.
    """
    name = "Lambda concurrency for GatewayReservedConcurrency"
    raw = deploy.parameters.get("GatewayReservedConcurrency", "0") or "0"
    try:
        requested = int(raw)
    except ValueError:
        return [Check(name, FAIL, f"GatewayReservedConcurrency={raw!r} is not a number", "pass a whole number")]
    limit = clients.lambda_.get_account_settings()["AccountLimit"]
    total, unreserved = int(limit["ConcurrentExecutions"]), int(limit["UnreservedConcurrentExecutions"])
    current = _current_gateway_reservation(deploy, clients)
    available = unreserved + current
    most = available - MIN_UNRESERVED_CONCURRENCY  # the largest reservation Lambda accepts
    account = f"account concurrency {total}, {unreserved} unreserved"
    if current:
        account += f" ({current} reserved by this stack's gateway now, which the deploy replaces)"
    left = available - requested

    def increase(reserve: int) -> str:
        needed = total + MIN_UNRESERVED_CONCURRENCY - (available - reserve)
        return (
            f"request Lambda concurrent executions of at least {needed} (aws service-quotas "
            f"request-service-quota-increase --service-code lambda --quota-code {LAMBDA_CONCURRENCY_QUOTA} "
            f"--desired-value {needed})"
        )

    if requested == 0:
        detail = f"0: the gateway has no ceiling and shares the account pool with the control functions ({account})"
        ceiling = f"GatewayReservedConcurrency={most} or less" if most >= 1 else f"a ceiling: {increase(1)}"
        fix = f"long generations can take that pool and throttle the control functions; {ceiling}"
        return [Check(name, WARN, detail, fix)]
    if left >= MIN_UNRESERVED_CONCURRENCY:
        return [Check(name, OK, f"reserving {requested} leaves {left} unreserved ({account})")]
    if most >= 1:
        fix = f"pass GatewayReservedConcurrency={most} (or less; 0 = no reservation), or {increase(requested)}"
    else:
        fix = (
            "pass GatewayReservedConcurrency=0 (no reservation: the gateway shares the account pool), "
            f"or {increase(requested)}"
        )
    detail = (
        f"reserving {requested} would leave {left} unreserved; Lambda refuses a reservation that leaves fewer than "
        f"{MIN_UNRESERVED_CONCURRENCY} ({account}): the deploy would fail on {GATEWAY_FUNCTION} and roll back"
    )
    return [Check(name, FAIL, detail, fix)]


def _current_gateway_reservation(deploy: Deploy, clients: Clients) -> int:
    if not deploy.stack_name:
        return 0
    try:
        resource = clients.cloudformation.describe_stack_resource(
            StackName=deploy.stack_name, LogicalResourceId=GATEWAY_FUNCTION
        )["StackResourceDetail"]
    except ClientError as error:
        if _code(error) == "ValidationError":  # no such stack (a first deploy) or no such resource
            return 0
        raise
    try:
        concurrency = clients.lambda_.get_function_concurrency(FunctionName=resource["PhysicalResourceId"])
    except ClientError as error:
        if _code(error) == "ResourceNotFoundException":
            return 0
        raise
    return int(concurrency.get("ReservedConcurrentExecutions") or 0)


def run_preflight(deploy: Deploy, clients: Clients, region: str, hub: HubProbe = hub_probe) -> list[Check]:
    checks: list[Check] = []
    if deploy.create_mode:
        checks += check_quotas(deploy, clients)
        checks += check_offerings(deploy, clients)
        checks += check_fleet_internet(deploy, clients)
        checks += check_ami(deploy, clients)
        checks += check_token_and_model(deploy, clients, hub)
    else:
        checks += check_attach_targets(deploy, clients)
    checks += check_function_routes(deploy, clients, region)
    checks += check_lambda_adapter(deploy, clients, region)
    checks += check_lambda_concurrency(deploy, clients)
    return checks


def report(checks: list[Check]) -> tuple[str, int]:
    lines = []
    for check in checks:
        lines.append(f"[{check.verdict:^4}] {check.name}: {check.detail}")
        if check.fix and check.verdict != OK:
            lines.append(f"       -> {check.fix}")
    failed = sum(c.verdict == FAIL for c in checks)
    warned = sum(c.verdict == WARN for c in checks)
    if failed:
        lines.append(f"preflight: {failed} check(s) failed, {warned} warning(s): a deploy would not work yet.")
    else:
        lines.append(f"preflight: ready to deploy ({warned} warning(s)).")
    return "\n".join(lines), 1 if failed else 0
