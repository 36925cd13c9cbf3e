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

from ..errors import UsageError


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


def _locate(model: type[BaseModel], loc: Sequence[str | int]) -> tuple[list[str], list[type[BaseModel]],
                                                                       list[type[BaseModel]]]:
    """The readable path of an error location, the models of the section it ends in, and all members
    of that section's union (when pydantic chose one of them by its tag).

    Pydantic puts the member of a union (its class name or discriminator tag) into the
    location; those parts are dropped (narrowing the section to that member), and the valid
    keys of an undecided union are those of all its members. Sequence indices and keys of plain
    mappings are kept.
    """
    models: list[type[BaseModel]] = [model]
    union: list[type[BaseModel]] = models
    path: list[str] = []
    for part in loc:
        name = str(part)
        owners = [m for m in models if name in m.model_fields]
        if owners:
            path.append(name)
            models = []
            for m in owners:
                models += [c for c in _models_in(m.model_fields[name].annotation) if c not in models]
            union = models
        elif isinstance(part, int) or not models or name not in _labels(models):
            path.append(name)
        else:
            models = [m for m in models if name == m.__name__ or name in _labels([m, m])] or models
    return path, models, union


def _kind_of(m: type[BaseModel]) -> str:
    tags = sorted(_labels([m, m]) - {m.__name__})
    return "/".join(tags) or m.__name__


def _known(models: Sequence[type[BaseModel]]) -> list[str]:
    """The keys valid in a section of one of ``models``."""
    if len(models) == 1:
        return list(models[0].model_fields)
    return sorted({f for m in models for f in m.model_fields})


def _renamed(models: Sequence[type[BaseModel]], key: str) -> str | None:
    """What to use instead of ``key``, a key of an earlier version (a model's ``renamed`` class variable)."""
    for m in models:
        hint = getattr(m, "renamed", {}).get(key)
        if hint:
            return str(hint)
    return None


def _labels(models: Sequence[type[BaseModel]]) -> set[str]:
    """What pydantic may insert into a location for a union of ``models``."""
    if len(models) < 2:
        return set()
    tags = {str(v) for m in models for f in m.model_fields.values() for v in get_args(f.annotation)
            if isinstance(v, str | int)}
    return {m.__name__ for m in models} | tags


def _describe(model: type[BaseModel], error: Mapping[str, Any]) -> str:
    """One error of ``model.model_validate`` as a line naming the key, the value and the fix."""
    path, models, union = _locate(model, error["loc"])
    known = _known(models)
    where = ".".join(path) or "config"
    if error["type"] == "extra_forbidden":
        renamed = _renamed(models, path[-1]) if path else None
        if renamed:
            return f"{where}: {renamed}"
        elsewhere = [_kind_of(m) for m in union if m not in models and path and path[-1] in m.model_fields]
        if elsewhere and len(models) == 1:
            tag = next((str(p) for p in error["loc"] if str(p) in _labels(union)), _kind_of(models[0]))
            return (f"unknown key '{where}' for kind '{tag}' (a key of kind "
                    f"{', '.join(elsewhere)}); valid keys: {', '.join(known)}")
        close = difflib.get_close_matches(path[-1] if path else "?", known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(known)}"
        return f"unknown key '{where}': {hint}"
    if error["type"] == "missing":
        return f"missing required key '{where}'"
    value = error.get("input")
    if isinstance(value, Mapping):  # a check of a whole section: its text is the message
        return error["msg"] if error["msg"].startswith(f"{where}.") else f"{where}: {error['msg']}"
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
