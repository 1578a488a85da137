"""Read template.yaml the way CloudFormation does, for tests.

- `load_template` parses YAML with CloudFormation's short tags (!Ref, !Sub, !GetAtt ...).
- `Stack` resolves intrinsic functions for one set of parameter values and a stack name, so tests see
  the rule patterns, names and conditions a real deployment would get.
- `pattern_matches` is EventBridge's event-pattern matching for the operators the template uses (exact
  values, prefix, suffix, wildcard, anything-but, exists, equals-ignore-case, numeric); anything else
  raises instead of guessing.
- `sam_translate` runs the real SAM transform (samtranslator) so tests can check what SAM generates
  (rule targets, EventInvokeConfig, roles), not what we hoped it would.
- `moto_ready` adapts a transformed template to moto's CloudFormation; every change names the moto gap it
  stands in for.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_PATH = ROOT / "template.yaml"
EVENTS_DIR = ROOT / "events"

# The values the events/ samples are written for: a stack named `spotkeeper` in create mode names its group
# `spotkeeper-tgi` and its alarms `spotkeeper-<alarm>`.
STACK_NAME = "spotkeeper"
ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
GROUP_NAME = "spotkeeper-tgi"

NO_VALUE = object()


# --------------------------------------------------------------------------------------------------------------
# YAML with CloudFormation short tags
# --------------------------------------------------------------------------------------------------------------
class _CfnLoader(yaml.SafeLoader):
    pass


def _construct_tag(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        logical_id, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [logical_id, attribute]}
    return {f"Fn::{tag_suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS_DIR / name).read_text())


# --------------------------------------------------------------------------------------------------------------
# Intrinsic functions
# --------------------------------------------------------------------------------------------------------------
class Stack:
    """One deployment of the template: parameter values, pseudo parameters, evaluated conditions.

    `Ref` to a resource resolves to `ref_values[logical_id]` when given, else to a recognisable placeholder
    `<LogicalId>`; `Fn::GetAtt` likewise to `<LogicalId.Attribute>`. Tests that care about a resource's
    identity provide it.
    """

    def __init__(
        self,
        template: dict[str, Any],
        parameters: dict[str, str] | None = None,
        stack_name: str = STACK_NAME,
        account_id: str = ACCOUNT_ID,
        region: str = REGION,
        ref_values: dict[str, Any] | None = None,
    ) -> None:
        self.template = template
        self.ref_values = dict(ref_values or {})
        self.pseudo = {
            "AWS::StackName": stack_name,
            "AWS::AccountId": account_id,
            "AWS::Region": region,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": f"arn:aws:cloudformation:{region}:{account_id}:stack/{stack_name}/0",
            "AWS::NoValue": NO_VALUE,
        }
        declared = template.get("Parameters", {})
        unknown = set(parameters or {}) - set(declared)
        if unknown:
            raise KeyError(f"not parameters of the template: {sorted(unknown)}")
        self.parameters: dict[str, Any] = {}
        for name, spec in declared.items():
            value = (parameters or {}).get(name, spec.get("Default"))
            if value is None:
                # Required parameters without a value get a placeholder that cannot be mistaken for real data.
                value = f"<{name}>"
            if spec["Type"] == "CommaDelimitedList" or spec["Type"].startswith("List<"):
                value = value if isinstance(value, list) else str(value).split(",")
            else:
                value = str(value)
            self.parameters[name] = value
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            self._conditions[name] = bool(self.resolve(self.template["Conditions"][name]))
        return self._conditions[name]

    def resource_exists(self, logical_id: str) -> bool:
        condition = self.template["Resources"][logical_id].get("Condition")
        return condition is None or self.condition(condition)

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            items = [self.resolve(item) for item in node]
            return [item for item in items if item is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return self._ref(arg)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::GetAtt":
                logical_id, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.ref_values.get(f"{logical_id}.{attribute}", f"<{logical_id}.{attribute}>")
            if key == "Fn::Sub":
                return self._sub(arg)
            if key == "Fn::If":
                name, if_true, if_false = arg
                return self.resolve(if_true if self.condition(name) else if_false)
            if key == "Fn::Equals":
                left, right = (self.resolve(a) for a in arg)
                return str(left) == str(right)
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(a) for a in arg)
            if key == "Fn::Or":
                return any(self.resolve(a) for a in arg)
            if key == "Fn::Join":
                delimiter, values = arg
                return delimiter.join(str(v) for v in self.resolve(values))
            if key == "Fn::Split":
                delimiter, value = arg
                return str(self.resolve(value)).split(delimiter)
            if key == "Fn::Select":
                index, values = arg
                return self.resolve(values)[int(self.resolve(index))]
            if key == "Fn::Base64":
                # Kept decoded: tests read the script, CloudFormation would encode it.
                return self.resolve(arg)
            if key.startswith("Fn::"):
                raise NotImplementedError(f"{key} is not resolved by tests/cfn.py")
        resolved = {k: self.resolve(v) for k, v in node.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}

    def _ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.template.get("Resources", {}):
            return self.ref_values.get(name, f"<{name}>")
        raise KeyError(f"!Ref to unknown name {name}")

    def _sub(self, arg: Any) -> str:
        if isinstance(arg, list):
            text, variables = arg
            variables = {k: self.resolve(v) for k, v in variables.items()}
        else:
            text, variables = arg, {}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name and name.split(".", 1)[0] in self.template.get("Resources", {}):
                return str(self.resolve({"Fn::GetAtt": name.split(".", 1)}))
            return str(self._ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)


# --------------------------------------------------------------------------------------------------------------
# The template's EventBridge rules
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    function: str
    event: str
    name: str
    pattern: dict[str, Any] | None
    schedule: str | None
    properties: dict[str, Any]


def stack_rules(stack: Stack) -> Iterator[Rule]:
    """Every rule the SAM functions declare, resolved for `stack`."""
    for logical_id, resource in stack.template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function" or not stack.resource_exists(logical_id):
            continue
        for event_name, event in resource["Properties"].get("Events", {}).items():
            props = stack.resolve(event.get("Properties", {}))
            if event["Type"] in ("EventBridgeRule", "CloudWatchEvent"):
                yield Rule(logical_id, event_name, props["RuleName"], props["Pattern"], None, props)
            elif event["Type"] == "Schedule":
                yield Rule(logical_id, event_name, props["Name"], None, props["Schedule"], props)


# --------------------------------------------------------------------------------------------------------------
# EventBridge event patterns
# --------------------------------------------------------------------------------------------------------------
_MISSING = object()


def pattern_matches(pattern: dict[str, Any], event: Any) -> bool:
    """True when EventBridge would deliver `event` to a rule with `pattern`."""
    if not isinstance(pattern, dict):
        raise ValueError(f"an event pattern is an object, not {pattern!r}")
    for key, expected in pattern.items():
        if key == "$or":
            raise NotImplementedError("$or is not used by the template")
        actual = event.get(key, _MISSING) if isinstance(event, dict) else _MISSING
        if isinstance(expected, dict):
            if not isinstance(actual, dict) or not pattern_matches(expected, actual):
                return False
        elif isinstance(expected, list):
            if not _field_matches(expected, actual):
                return False
        else:
            raise ValueError(f"pattern values are objects or arrays, {key!r} holds {expected!r}")
    return True


def _field_matches(matchers: list[Any], actual: Any) -> bool:
    if isinstance(actual, dict):
        return False
    values = actual if isinstance(actual, list) else [actual]
    for matcher in matchers:
        if isinstance(matcher, dict) and "exists" in matcher:
            if (actual is not _MISSING) == bool(matcher["exists"]):
                return True
            continue
        if actual is _MISSING:
            continue
        if any(_value_matches(matcher, value) for value in values):
            return True
    return False


def _value_matches(matcher: Any, value: Any) -> bool:
    if not isinstance(matcher, dict):
        # EventBridge compares exact values, type included: the string "1" does not match the number 1.
        if _is_number(matcher) and _is_number(value):
            return matcher == value
        return type(matcher) is type(value) and matcher == value
    if len(matcher) != 1:
        raise ValueError(f"one operator per matcher, got {matcher!r}")
    ((operator, operand),) = matcher.items()
    if operator == "prefix":
        return isinstance(value, str) and value.startswith(operand)
    if operator == "suffix":
        return isinstance(value, str) and value.endswith(operand)
    if operator == "equals-ignore-case":
        return isinstance(value, str) and value.lower() == operand.lower()
    if operator == "wildcard":
        return isinstance(value, str) and _wildcard_matches(operand, value)
    if operator == "anything-but":
        if isinstance(operand, dict):
            return not _value_matches(operand, value)
        excluded = operand if isinstance(operand, list) else [operand]
        return not any(_value_matches(item, value) for item in excluded)
    if operator == "numeric":
        if not _is_number(value):
            return False
        checks = {"<": value.__lt__, "<=": value.__le__, "=": value.__eq__, ">=": value.__ge__, ">": value.__gt__}
        return all(checks[op](bound) for op, bound in zip(operand[::2], operand[1::2], strict=True))
    raise NotImplementedError(f"event pattern operator {operator!r} is not supported by tests/cfn.py")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _wildcard_matches(pattern: str, value: str) -> bool:
    """`*` matches any run of characters; `\\*` and `\\\\` are a literal star and backslash."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "*\\":
            regex += re.escape(pattern[i + 1])
            i += 2
        elif pattern[i] == "*":
            regex += ".*"
            i += 1
        else:
            regex += re.escape(pattern[i])
            i += 1
    return re.fullmatch(regex, value, re.DOTALL) is not None


# --------------------------------------------------------------------------------------------------------------
# SAM transform and moto
# --------------------------------------------------------------------------------------------------------------
def sam_translate(template: dict[str, Any], region: str = REGION) -> dict[str, Any]:
    """The CloudFormation template SAM produces, with code locations as `sam package` would leave them."""
    import boto3
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    sam = copy.deepcopy(template)
    for logical_id, resource in sam["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = f"s3://spotkeeper-code/{logical_id}.zip"
        elif resource["Type"] == "AWS::Serverless::LayerVersion":
            resource["Properties"]["ContentUri"] = f"s3://spotkeeper-code/{logical_id}.zip"
    session = boto3.Session(region_name=region, aws_access_key_id="testing", aws_secret_access_key="testing")
    translator = Translator(None, Parser(), boto_session=session)
    return translator.translate(sam, parameter_values={}, get_managed_policy_map=lambda: {})


MOTO_AMI_PARAMETER = "/spotkeeper/test/gpu-ami-id"


def moto_ready(transformed: dict[str, Any]) -> dict[str, Any]:
    """The transformed template as moto 5.2's CloudFormation can create it. Each change stands in for a gap:

    - moto resolves an SSM-typed parameter's *default* before the passed value, and refuses to store the
      reserved /aws/service/... names: the AMI parameter default points at MOTO_AMI_PARAMETER instead
      (the caller puts an AMI id there).
    - moto's RestApi ignores the OpenAPI Body, so the deployment fails with "no methods": the REST API,
      its deployment, stage, usage plan and invoke permissions are left out (the gateway is tested on its own).
    """
    ready = copy.deepcopy(transformed)
    ready["Parameters"]["AmiSsmParameter"]["Default"] = MOTO_AMI_PARAMETER
    resources = ready["Resources"]
    api_ids = {k for k, v in resources.items() if v["Type"].startswith("AWS::ApiGateway::")}
    api_ids |= {
        k
        for k, v in resources.items()
        if v["Type"] == "AWS::Lambda::Permission" and "GatewayApi" in json.dumps(v["Properties"].get("SourceArn"))
    }
    for logical_id in api_ids:
        del resources[logical_id]
    ready["Outputs"] = {
        name: output
        for name, output in ready.get("Outputs", {}).items()
        if not any(api_id in json.dumps(output) for api_id in api_ids)
    }
    return ready
