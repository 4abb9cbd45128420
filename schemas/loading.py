"""Load YAML files into pydantic models with errors that name the file, the field path and what is wrong."""

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration or catalog file is unreadable or invalid; the message says where and why."""


def format_validation_error(source: str, error: ValidationError) -> str:
    """One line per problem: `file: field.path: message (got value)`."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        got = problem.get("input")
        shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
        lines.append(f"{source}: {where}: {problem['msg']}{shown}")
    return "\n".join(lines)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read file ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def validate(model: type[Model], data: dict, source: str) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None


def load_yaml_model(path: str | Path, model: type[Model]) -> Model:
    """Read `path` and validate it as `model`; raise ConfigError naming the file and each bad field."""
    return validate(model, read_yaml(path), str(path))
