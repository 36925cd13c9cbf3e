"""Validation of YAML documents against frozen pydantic models, with one-line errors.

Unknown keys get a suggestion for the nearest valid key (``did you mean 'dataset'?``),
bad values name the key, the value and the rule; ``--set key.sub=value`` overrides are
applied before validation. Shared by the run config and the training config.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import UsageError


class ConfigError(UsageError):
    """A configuration the user must fix (exit code 2 on the CLI)."""


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


M = TypeVar("M", bound=BaseModel)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through unions, ``Optional``, tuples)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        found += [m for m in _models_in(arg) if m not in found]
    return found


def _locate(model: type[BaseModel], loc: Sequence[str | int]) -> tuple[list[str], list[str]]:
    """The readable path of an error location and the keys valid in the section it ends in.

    Pydantic puts the member of a union (its class name or discriminator tag) into the
    location; those parts are dropped, and the valid keys of a union are those of all its
    members. Sequence indices and keys of plain mappings are kept.
    """
    models: list[type[BaseModel]] = [model]
    path: list[str] = []
    for i, part in enumerate(loc):
        name = str(part)
        owners = [m for m in models if name in m.model_fields]
        if owners:
            path.append(name)
            models = []
            for m in owners:
                models += [c for c in _models_in(m.model_fields[name].annotation) if c not in models]
        elif isinstance(part, int) or not models or i == len(loc) - 1 or name not in _labels(models):
            path.append(name)
    if len(models) == 1:
        return path, list(models[0].model_fields)
    return path, sorted({f for m in models for f in m.model_fields})


def _labels(models: Sequence[type[BaseModel]]) -> set[str]:
    """What pydantic may insert into a location for a union of ``models``."""
    if len(models) < 2:
        return set()
    tags = {str(v) for m in models for f in m.model_fields.values() for v in get_args(f.annotation)
            if isinstance(v, str | int)}
    return {m.__name__ for m in models} | tags


def _describe(model: type[BaseModel], error: Mapping[str, Any]) -> str:
    """One error of ``model.model_validate`` as a line naming the key, the value and the fix."""
    path, known = _locate(model, error["loc"])
    where = ".".join(path) or "config"
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(path[-1] if path else "?", known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(known)}"
        return f"unknown key '{where}': {hint}"
    if error["type"] == "missing":
        return f"missing required key '{where}'"
    value = error.get("input")
    if not path and isinstance(value, Mapping):  # a check of the whole document: its text is the message
        return f"{where}: {error['msg']}"
    return f"{where}: {error['msg']} (got {value!r})"


def describe_errors(model: type[BaseModel], exc: ValidationError) -> str:
    """All errors of validating ``model``, one line, separated by ``;``."""
    return "; ".join(_describe(model, e) for e in exc.errors())


def validate_model(model: type[M], data: Mapping[str, Any], what: str) -> M:
    """``model.model_validate(data)``, or a one-line :class:`ConfigError` starting with ``what``
    (e.g. ``invalid config``) that names each bad key or value and suggests the fix."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{what}: {describe_errors(model, exc)}") from None


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML (``[16,32,32]``, ``true``)."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set '{item}': expected key.sub=value, e.g. blocks.write_shape=[16,32,32]")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, Mapping):
                raise ConfigError(f"--set '{item}': '{part}' is a value, not a section")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return out


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where: ``line L, column C: problem`` (1-based, as editors count)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist (give the path of a YAML file)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{p}' is not valid YAML: {yaml_problem(exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file '{p}' must hold a mapping of sections, got {type(data).__name__}")
    return dict(data)
