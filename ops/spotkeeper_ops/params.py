"""The parameters a deploy would use: the template's defaults, a samconfig environment, then explicit overrides."""

from __future__ import annotations

import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class _TemplateLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !Sub ...), which only the Parameters section is read for."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    return {suffix: loader.construct_mapping(node, deep=True)}  # type: ignore[arg-type]


_TemplateLoader.add_multi_constructor("!", _tag)


def template_parameters(template: Path) -> dict[str, dict[str, Any]]:
    return yaml.load(template.read_text(), Loader=_TemplateLoader)["Parameters"]  # noqa: S506 - SafeLoader subclass


def parse_overrides(text: str | list[str]) -> dict[str, str]:
    """``K=V K2="a b"`` (samconfig's parameter_overrides, or the command line's) into a dict."""
    items = shlex.split(text) if isinstance(text, str) else text
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"parameter override {item!r} is not Key=Value")
        parsed[key] = value
    return parsed


@dataclass
class Deploy:
    """What ``sam deploy`` would be given."""

    parameters: dict[str, str]
    stack_name: str | None = None
    region: str | None = None
    declared: dict[str, dict[str, Any]] = field(default_factory=dict)

    def list(self, name: str) -> list[str]:
        return [v.strip() for v in self.parameters.get(name, "").split(",") if v.strip()]

    @property
    def create_mode(self) -> bool:
        return self.parameters.get("Mode", "create") == "create"


def resolve_deploy(
    template: Path,
    samconfig: Path | None = None,
    config_env: str | None = None,
    overrides: dict[str, str] | None = None,
    region: str | None = None,
) -> Deploy:
    declared = template_parameters(template)
    values = {name: str(spec["Default"]) for name, spec in declared.items() if "Default" in spec}
    stack_name = None
    config_region = None
    if config_env:
        config = tomllib.loads((samconfig or template.parent / "samconfig.toml").read_text())
        if config_env not in config:
            raise ValueError(f"samconfig has no environment {config_env!r} (has: {', '.join(sorted(config))})")
        environment = config[config_env]
        merged: dict[str, Any] = {}
        for section in ("global", "deploy"):
            merged |= environment.get(section, {}).get("parameters", {})
        values |= parse_overrides(merged.get("parameter_overrides", ""))
        stack_name = merged.get("stack_name")
        config_region = merged.get("region")
    values |= overrides or {}
    unknown = set(values) - set(declared)
    if unknown:
        raise ValueError(f"not parameters of the template: {', '.join(sorted(unknown))}")
    return Deploy(values, stack_name, region or config_region, declared)
