"""``spotkeeper preflight`` against moto: an account a deploy works in, and one it would not.

moto's Service Quotas knows only VPC quotas, moto's Lambda holds no public layers of other accounts and has no
GetAccountSettings: those are stand-ins answering in AWS's documented shapes. The Hugging Face Hub is a function the
test passes.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from spotkeeper_ops.cli import ROOT
from spotkeeper_ops.params import parse_overrides, resolve_deploy
from spotkeeper_ops.preflight import FAIL, OK, WARN, Clients, check_lambda_concurrency, report, run_preflight

REGION = "us-east-1"
GATED = "meta-llama/Llama-3.1-8B-Instruct"
TOKEN = "hf_" + "t" * 34
AMI_PARAMETER = "/spotkeeper/test/dlami"
LWA_ARN = f"arn:aws:lambda:{REGION}:753240598075:layer:LambdaAdapterLayerArm64:25"


class ServiceQuotas:
    """Service Quotas for EC2 (moto has none): GetServiceQuota answers from a dict, NoSuchResource otherwise."""

    def __init__(self, values: dict[str, float]) -> None:
        self.values = values

    def get_service_quota(self, ServiceCode: str, QuotaCode: str) -> dict[str, Any]:
        if ServiceCode == "ec2" and QuotaCode in self.values:
            return {"Quota": {"ServiceCode": "ec2", "QuotaCode": QuotaCode, "Value": self.values[QuotaCode]}}
        raise ClientError({"Error": {"Code": "NoSuchResourceException"}}, "GetServiceQuota")

    get_aws_default_service_quota = get_service_quota


class LambdaAccount:
    """Lambda's GetAccountSettings, which moto 5.2 lacks: AWS answers the account's concurrency quota
    (ConcurrentExecutions) and that quota less every function's reserved concurrency (UnreservedConcurrentExecutions,
    https://docs.aws.amazon.com/lambda/latest/api/API_AccountLimit.html); the reservations are read from moto's
    functions. Every other call goes to the client it wraps (which a test may stub)."""

    def __init__(self, client: Any, functions: Any, concurrency: int) -> None:
        self.client, self.functions, self.concurrency = client, functions, concurrency

    def get_account_settings(self) -> dict[str, Any]:
        reserved = 0
        for page in self.functions.get_paginator("list_functions").paginate():
            for function in page["Functions"]:
                answer = self.functions.get_function_concurrency(FunctionName=function["FunctionName"])
                reserved += int(answer.get("ReservedConcurrentExecutions") or 0)
        total = self.concurrency
        limit = {"ConcurrentExecutions": total, "UnreservedConcurrentExecutions": total - reserved}
        return {"AccountLimit": limit, "AccountUsage": {"FunctionCount": 0, "TotalCodeSize": 0}}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


class Hub:
    """The Hub as spotkeeper sees it: a public model answers 200, a gated one 401 GatedRepo without access."""

    def __init__(self, public: set[str], gated: dict[str, str]) -> None:
        self.public, self.gated, self.calls = public, gated, []

    def __call__(self, url: str, token: str | None) -> tuple[int, str]:
        self.calls.append((url, token))
        model = url.removeprefix("https://huggingface.co/").removesuffix("/resolve/main/config.json")
        if model in self.public:
            return 200, ""
        if model in self.gated:
            return (302, "") if token == self.gated[model] else (401 if token is None else 403, "GatedRepo")
        return 401, "RepoNotFound"


def _network(ec2: Any) -> dict[str, str]:
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    ids: dict[str, str] = {"vpc": vpc}
    public_table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=public_table, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    for i, zone in enumerate("ab"):
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{zone}")
        ids[f"public-{zone}"] = subnet["Subnet"]["SubnetId"]
        ec2.associate_route_table(RouteTableId=public_table, SubnetId=ids[f"public-{zone}"])
    eip = ec2.allocate_address(Domain="vpc")["AllocationId"]
    nat = ec2.create_nat_gateway(SubnetId=ids["public-a"], AllocationId=eip)["NatGateway"]["NatGatewayId"]
    private_table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=private_table, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=nat)
    for i, zone in enumerate("ab"):
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{10 + i}.0/24", AvailabilityZone=f"{REGION}{zone}")
        ids[f"private-{zone}"] = subnet["Subnet"]["SubnetId"]
        ec2.associate_route_table(RouteTableId=private_table, SubnetId=ids[f"private-{zone}"])
    isolated = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.20.0/24", AvailabilityZone=f"{REGION}a")
    ids["isolated"] = isolated["Subnet"]["SubnetId"]
    isolated_table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.associate_route_table(RouteTableId=isolated_table, SubnetId=ids["isolated"])
    ids["isolated-table"] = isolated_table
    return ids


@pytest.fixture
def account(aws):
    ec2 = aws.client("ec2")
    net = _network(ec2)
    ami = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "architecture", "Values": ["x86_64"]}])["Images"]
    aws.client("ssm").put_parameter(Name=AMI_PARAMETER, Value=ami[0]["ImageId"], Type="String")
    key = aws.client("kms").create_key(Description="hf token key")["KeyMetadata"]["Arn"]
    secret = aws.client("secretsmanager").create_secret(Name="spotkeeper/hf-token", SecretString=TOKEN, KmsKeyId=key)
    lambda_ = aws.client("lambda")
    return aws, net, secret["ARN"], key, lambda_


def _run(
    aws, lambda_: Any, quotas: dict[str, float], hub: Hub, concurrency: int = 1000, **parameters: str
) -> tuple[list, str, int]:
    deploy = resolve_deploy(ROOT / "template.yaml", overrides=parameters, region=REGION)
    clients = Clients.from_session(aws)
    clients.service_quotas = ServiceQuotas(quotas)
    clients.lambda_ = LambdaAccount(lambda_, aws.client("lambda"), concurrency)
    checks = run_preflight(deploy, clients, REGION, hub=hub)
    text, code = report(checks)
    return checks, text, code


GOOD_QUOTAS = {"L-3819A6DF": 64, "L-DB2E81BA": 32}


def test_preflight_passes_where_a_deploy_works(account):
    aws, net, secret_arn, key, lambda_ = account
    hub = Hub(public=set(), gated={GATED: TOKEN})
    with Stubber(lambda_) as layers:
        layers.add_response("get_layer_version_by_arn", {"Version": 25, "LayerVersionArn": LWA_ARN}, {"Arn": LWA_ARN})
        checks, text, code = _run(
            aws,
            lambda_,
            GOOD_QUOTAS,
            hub,
            VpcId=net["vpc"],
            FleetSubnetIds=f"{net['public-a']},{net['public-b']}",
            FunctionSubnetIds=f"{net['private-a']},{net['private-b']}",
            AmiSsmParameter=AMI_PARAMETER,
            InstanceTypes="g5.2xlarge,g6.2xlarge",
            ModelId=GATED,
            ModelIsGated="true",
            HfTokenSecretArn=secret_arn,
            HfTokenSecretKmsKeyArn=key,
        )
    assert code == 0, text
    assert {c.verdict for c in checks} == {OK}, text
    names = " / ".join(c.name for c in checks)
    for what in ("spot vCPU quota", "on-demand vCPU quota", "offered", "internet", "AMI", "token", "model", "Adapter"):
        assert what in names
    [concurrency] = [c for c in checks if c.name == "Lambda concurrency for GatewayReservedConcurrency"]
    assert concurrency.detail.startswith("reserving 100 leaves 900 unreserved")  # the template's default, 1000
    assert sum("function subnet" in c.name for c in checks) == 2
    # the model was asked for with the token read from the secret
    assert hub.calls == [(f"https://huggingface.co/{GATED}/resolve/main/config.json", TOKEN)]
    assert text.endswith("ready to deploy (0 warning(s)).")


def test_preflight_fails_where_a_deploy_could_not_work_and_says_what_to_do(account):
    aws, net, secret_arn, key, lambda_ = account
    hub = Hub(public=set(), gated={GATED: TOKEN})
    with Stubber(lambda_) as layers:
        layers.add_client_error("get_layer_version_by_arn", "ResourceNotFoundException", http_status_code=404)
        checks, text, code = _run(
            aws,
            lambda_,
            {"L-3819A6DF": 0, "L-DB2E81BA": 32},  # a new account: no Spot GPU quota
            hub,
            concurrency=10,  # and a new account's Lambda concurrency: the default reservation of 100 is refused
            VpcId=net["vpc"],
            FleetSubnetIds=net["private-a"],  # no internet gateway for the image and weights
            FunctionSubnetIds=f"{net['public-a']},{net['isolated']}",  # public, and isolated without endpoints
            AmiSsmParameter="/spotkeeper/test/no-such-ami",
            InstanceTypes="g5.2xlarge",
            ModelId=GATED,  # gated, no token
            LambdaAdapterLayerVersion="9999",
        )
    assert code == 1
    failed = {c.name: c for c in checks if c.verdict == FAIL}
    spot = failed["spot vCPU quota, G and VT instances (L-3819A6DF)"]
    assert "request-service-quota-increase" in spot.fix and "--desired-value 16" in spot.fix
    assert "fleet subnets reach the internet (TGI image, model weights)" in failed
    public = failed[f"function subnet {net['public-a']} reaches the AWS APIs"]
    assert "public IP" in public.detail
    isolated = failed[f"function subnet {net['isolated']} reaches the AWS APIs"]
    assert "com.amazonaws.us-east-1.dynamodb" in isolated.fix and "com.amazonaws.us-east-1.autoscaling" in isolated.fix
    assert "does not resolve" in failed["Deep Learning AMI parameter /spotkeeper/test/no-such-ami"].detail
    model = failed[f"model {GATED} downloadable from the Hugging Face Hub"]
    assert "HfTokenSecretArn" in model.fix
    assert "LambdaAdapterLayerVersion" in failed["Lambda Web Adapter layer"].fix
    concurrency = failed["Lambda concurrency for GatewayReservedConcurrency"]
    assert "reserving 100 would leave -90 unreserved" in concurrency.detail
    assert concurrency.fix.startswith("pass GatewayReservedConcurrency=0 (no reservation")
    assert "--quota-code L-B99A9384 --desired-value 200" in concurrency.fix
    assert "a deploy would not work yet" in text


def _role(aws, name: str) -> str:
    document = json.dumps({"Version": "2012-10-17", "Statement": []})
    return aws.client("iam").create_role(RoleName=name, AssumeRolePolicyDocument=document)["Role"]["Arn"]


def _function(aws, name: str) -> str:
    role = _role(aws, f"{name}-role")
    aws.client("lambda").create_function(
        FunctionName=name, Role=role, Runtime="python3.13", Handler="app.handler", Code={"ZipFile": b"stand-in"}
    )
    return name


def test_a_gateway_reservation_lambda_would_refuse_fails_naming_the_value_that_works(aws, monkeypatch):
    # moto enforces AWS's rule on PutFunctionConcurrency when given the account quota: the same verdict, both ways
    monkeypatch.setenv("MOTO_LAMBDA_CONCURRENCY_QUOTA", "250")
    lambda_ = aws.client("lambda")
    other = _function(aws, "someone-elses")
    lambda_.put_function_concurrency(FunctionName=other, ReservedConcurrentExecutions=100)
    clients = Clients.from_session(aws)
    clients.lambda_ = LambdaAccount(lambda_, lambda_, concurrency=250)

    def verdict(value: str):
        deploy = resolve_deploy(ROOT / "template.yaml", overrides={"GatewayReservedConcurrency": value}, region=REGION)
        [check] = check_lambda_concurrency(deploy, clients)
        return check

    default = verdict("100")  # 250 - 100 elsewhere - 100 = 50 < 100
    assert default.verdict == FAIL
    assert "would leave 50 unreserved" in default.detail and "fewer than 100" in default.detail
    assert default.fix.startswith("pass GatewayReservedConcurrency=50 (or less; 0 = no reservation)")
    assert "--desired-value 300" in default.fix
    assert verdict("50").verdict == OK
    # 0 deploys, and leaves the control functions unprotected from the gateway's traffic: said, with the ceiling
    unreserved = verdict("0")
    assert unreserved.verdict == WARN and unreserved.fix.endswith("GatewayReservedConcurrency=50 or less")

    gateway = _function(aws, "gateway")
    with pytest.raises(ClientError, match="below its minimum value of \\[100\\]"):
        lambda_.put_function_concurrency(FunctionName=gateway, ReservedConcurrentExecutions=51)
    lambda_.put_function_concurrency(FunctionName=gateway, ReservedConcurrentExecutions=50)


def test_a_redeploy_counts_the_reservation_its_gateway_already_holds(aws):
    template = {
        "Resources": {
            "GatewayFunction": {
                "Type": "AWS::Lambda::Function",
                "Properties": {
                    "Role": _role(aws, "gateway-role"),
                    "Runtime": "python3.13",
                    "Handler": "app.handler",
                    "Code": {"ZipFile": "def handler(event, context): pass"},
                },
            }
        }
    }
    aws.client("cloudformation").create_stack(StackName="sk", TemplateBody=json.dumps(template))
    physical = aws.client("cloudformation").describe_stack_resource(StackName="sk", LogicalResourceId="GatewayFunction")
    lambda_ = aws.client("lambda")
    lambda_.put_function_concurrency(
        FunctionName=physical["StackResourceDetail"]["PhysicalResourceId"], ReservedConcurrentExecutions=100
    )
    clients = Clients.from_session(aws)
    clients.lambda_ = LambdaAccount(lambda_, lambda_, concurrency=200)  # 100 unreserved: all taken but the minimum
    deploy = resolve_deploy(ROOT / "template.yaml", overrides={"GatewayReservedConcurrency": "100"}, region=REGION)
    # Given the stack's name, its gateway's 100 go back into the pool the deploy draws from
    deploy.stack_name = "sk"
    [check] = check_lambda_concurrency(deploy, clients)
    assert check.verdict == OK, check
    assert "100 reserved by this stack's gateway now" in check.detail
    # A first deploy under another name would take 100 more: refused
    deploy.stack_name = "sk-other"
    [check] = check_lambda_concurrency(deploy, clients)
    assert check.verdict == FAIL and "would leave 0 unreserved" in check.detail


def test_vpc_endpoints_stand_in_for_a_nat_route(account):
    aws, net, secret_arn, key, lambda_ = account
    ec2 = aws.client("ec2")
    for service in ("autoscaling", "ec2", "sns", "cloudformation", "xray"):
        ec2.create_vpc_endpoint(
            VpcId=net["vpc"],
            ServiceName=f"com.amazonaws.{REGION}.{service}",
            VpcEndpointType="Interface",
            SubnetIds=[net["isolated"]],
            PrivateDnsEnabled=True,
        )
    deploy = resolve_deploy(
        ROOT / "template.yaml", overrides={"VpcId": net["vpc"], "FunctionSubnetIds": net["isolated"]}, region=REGION
    )
    from spotkeeper_ops.preflight import check_function_routes

    clients = Clients.from_session(aws)
    # Given every interface endpoint but DynamoDB's: it fails naming only dynamodb
    [check] = check_function_routes(deploy, clients, REGION)
    assert check.verdict == FAIL and check.detail.endswith("dynamodb")
    # When the DynamoDB gateway endpoint is on the subnet's route table, it passes
    ec2.create_vpc_endpoint(
        VpcId=net["vpc"],
        ServiceName=f"com.amazonaws.{REGION}.dynamodb",
        VpcEndpointType="Gateway",
        RouteTableIds=[net["isolated-table"]],
    )
    [check] = check_function_routes(deploy, clients, REGION)
    assert check.verdict == OK


def test_a_customer_key_secret_needs_its_key_parameter(account):
    aws, net, secret_arn, key, lambda_ = account
    deploy = resolve_deploy(
        ROOT / "template.yaml", overrides={"ModelId": GATED, "HfTokenSecretArn": secret_arn}, region=REGION
    )
    from spotkeeper_ops.preflight import check_token_and_model

    checks = check_token_and_model(deploy, Clients.from_session(aws), Hub(public=set(), gated={GATED: TOKEN}))
    [key_check] = [c for c in checks if c.verdict == FAIL]
    assert key_check.fix == f"pass HfTokenSecretKmsKeyArn={key} (the instance role needs kms:Decrypt on it)"


def test_samconfig_environment_and_overrides_make_the_deploy(tmp_path):
    samconfig = tmp_path / "samconfig.toml"
    samconfig.write_text(
        'version = 0.1\n[prod.global.parameters]\nstack_name = "sk-prod"\n'
        '[prod.deploy.parameters]\nregion = "eu-west-1"\n'
        'parameter_overrides = "Environment=prod ModelId=\\"Qwen/Qwen2.5-7B-Instruct\\" '
        'FleetSubnetIds=subnet-a,subnet-b"\n'
    )
    deploy = resolve_deploy(ROOT / "template.yaml", samconfig, "prod", parse_overrides(["NumShard=2"]))
    assert (deploy.stack_name, deploy.region) == ("sk-prod", "eu-west-1")
    assert deploy.parameters["Environment"] == "prod" and deploy.parameters["NumShard"] == "2"
    assert deploy.list("FleetSubnetIds") == ["subnet-a", "subnet-b"]
    assert deploy.parameters["TgiPort"] == "8080"  # the template's default
    with pytest.raises(ValueError, match="NoSuchParameter"):
        resolve_deploy(ROOT / "template.yaml", overrides={"NoSuchParameter": "x"})
    with pytest.raises(ValueError, match="no environment"):
        resolve_deploy(ROOT / "template.yaml", samconfig, "staging")


def test_cli_prints_verdicts_and_exits_nonzero_on_a_bad_parameter():
    from spotkeeper_ops.cli import main

    err = io.StringIO()
    assert main(["preflight", "--parameter-overrides", "Bogus=1"], out=io.StringIO(), err=err) == 2
    assert "Bogus" in err.getvalue()


def test_operator_commands_stay_out_of_the_lambda_artifacts():
    from cfn import load_template

    uris = [
        str(r["Properties"].get("CodeUri") or r["Properties"].get("ContentUri"))
        for r in load_template()["Resources"].values()
        if r["Type"] in ("AWS::Serverless::Function", "AWS::Serverless::LayerVersion")
    ]
    assert uris and all(uri.startswith(("functions/", "layers/")) for uri in uris)
    assert not (ROOT / "layers/spotkeeper/spotkeeper/keys.py").exists()
    shipped = [*ROOT.glob("layers/**/*.py"), *ROOT.glob("functions/**/*.py")]
    assert not [p for p in shipped if "spotkeeper_ops" in p.read_text()]
