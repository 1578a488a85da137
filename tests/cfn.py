"""Read template.yaml the way CloudFormation does, for tests, on the local world's template pipeline.

- `load_template` and `sam_translate` are the drill's (``spotkeeper_local.embedded_aws``): the template with
  CloudFormation's short tags as their long forms, and the real SAM transform (what CloudFormation receives).
- `Stack` resolves intrinsic functions for one set of parameter values and a stack name, so tests see
  the rule patterns, names and conditions a real deployment would get.
- `pattern_matches` is moto's EventBridge event-pattern matching (the one the drill's bus routes with).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moto.events.models import EventPattern

from spotkeeper_local.embedded_aws import ROOT, TEMPLATE_PATH, load_sam_template, translate

EVENTS_DIR = ROOT / "events"

# The values the events/ samples are written for: a stack named `spotkeeper` in create mode names its group
# `spotkeeper-tgi` and its alarms `spotkeeper-<alarm>`.
STACK_NAME = "spotkeeper"
ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
GROUP_NAME = "spotkeeper-tgi"

NO_VALUE = object()


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    return load_sam_template(path)


def sam_translate(template: dict[str, Any]) -> dict[str, Any]:
    """The CloudFormation template SAM produces, with code locations as `sam package` would leave them."""
    return translate(template)


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
            if key == "Fn::FindInMap":
                mapping, top, second = (str(self.resolve(part)) for part in arg)
                return self.template["Mappings"][mapping][top][second]
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
def pattern_matches(pattern: dict[str, Any], event: dict[str, Any]) -> bool:
    """True when EventBridge would deliver `event` to a rule with `pattern` (moto's matcher)."""
    return EventPattern.load(json.dumps(pattern)).matches_event(event)
