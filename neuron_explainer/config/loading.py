"""Load a run config: YAML without YAML 1.1's surprises, typed overrides, one-line error messages.

- YAML 1.1 reads `5:12` as the base-60 integer 312, so a neuron spec written unquoted (`neurons: 5:12`)
  would silently become a number. The loader here resolves no sexagesimal numbers: `5:12` is a string.
- Overrides come as a mapping of dotted keys to values. Values from CLI flags arrive typed and are set
  as they are. Text from `--set key=value` is converted by the type of the field it targets: a text
  field takes the text verbatim (so `--set neurons=12:34` is the string "12:34"), a number, flag, list
  or mapping field parses it as one YAML value. Nothing is turned into YAML text and parsed back.
- A validation failure becomes one line per problem, naming the key (and the nearest known key for a
  typo), never pydantic's multi-line dump.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from neuron_explainer.config.sections import RunConfig
from neuron_explainer.errors import ConfigError

MOVED_KEYS = {
    "llm_device": "llm.device",
    "max_concurrent": "llm.max_in_flight",
    "llm_cache": "llm.cache",
    "cache_logprobs": "llm.cache_logprobs",
}
"""Top-level keys of earlier versions -> where they live now (a config using them gets a message saying so)."""


class PlainLoader(yaml.SafeLoader):
    """A safe YAML loader that resolves decimal numbers only (no base-60 `1:20`, no `0o17` surprises)."""


PlainLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
PlainLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+)$"), list("-+0123456789")
)
PlainLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)?\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML text with PlainLoader.

    Raises:
        ConfigError: the text is not valid YAML.
    """
    try:
        return yaml.load(text, Loader=PlainLoader)  # noqa: S506 (PlainLoader is a SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(e).split())}") from None


def _field_type(model: type[BaseModel], key: str, dotted: str) -> Any:
    fields = model.model_fields
    if key not in fields:
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown config key {dotted!r}{hint}")
    return fields[key].annotation


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def target_type(dotted: str) -> Any:
    """The annotation of the config field a dotted key names (Optional stripped).

    Raises:
        ConfigError: the key names no field; the message suggests the nearest one.
    """
    if dotted in MOVED_KEYS:
        raise ConfigError(f"config key {dotted!r} has moved: set {MOVED_KEYS[dotted]!r} instead")
    model: Any = RunConfig
    annotation: Any = None
    parts = dotted.split(".")
    i = 0
    while i < len(parts):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigError(f"cannot set {dotted!r}: {'.'.join(parts[:i])!r} is not a section")
        annotation = _strip_optional(_field_type(model, parts[i], dotted))
        i += 1
        if typing.get_origin(annotation) is dict and i < len(parts):  # e.g. prices.<spec>.prompt
            annotation = typing.get_args(annotation)[1]
            i += 1
        model = annotation
    return annotation


def _is_text(annotation: Any) -> bool:
    if annotation is str:
        return True
    if typing.get_origin(annotation) is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    return False


def convert_text(dotted: str, text: str) -> Any:
    """The typed value of `--set dotted=text`: verbatim for text fields, one YAML value otherwise."""
    annotation = target_type(dotted)
    if _is_text(annotation):
        return text.strip()
    if text.strip().lower() in ("null", "none", "~", ""):
        return None
    return parse_yaml(text, f"the value of {dotted}")


def parse_set_options(items: list[str] | None) -> dict[str, Any]:
    """`["a.b=value", ...]` (the CLI's --set) as typed overrides.

    Raises:
        ConfigError: an item without `=`, an unknown key, or a value that is not valid YAML.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} must look like section.key=value")
        out[key.strip()] = convert_text(key.strip(), text)
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    keys = dotted.split(".")
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def format_validation_error(error: ValidationError, where: str) -> str:
    """One line per problem: `key: message (got value)`; typos name the nearest known key."""
    problems = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            try:
                target_type(loc)
                problems.append(f"unknown config key {loc!r}")
            except ConfigError as e:
                problems.append(str(e))
            continue
        got = item.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, dict | list) else ""
        problems.append(f"{loc or 'config'}: {item['msg']}{shown}")
    return f"invalid config{where}: " + "; ".join(problems)


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | Sequence[str] | None = None
) -> RunConfig:
    """Load a YAML run config and merge overrides into it.

    `overrides` is a mapping of dotted keys to typed values (set as given), or a list of `key=text`
    strings as `--set` takes them (converted by `parse_set_options`, by the type of each field).

    Raises:
        ConfigError: a missing or invalid file, a key that moved or does not exist, or a bad value.
    """
    data: dict[str, Any] = {}
    where = f" {path}" if path is not None else ""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        loaded = parse_yaml(p.read_text(encoding="utf-8"), f"config file {p}")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at top level")
        data = loaded or {}
    for old, new in MOVED_KEYS.items():
        if old in data:
            raise ConfigError(f"config key {old!r} (in{where}) has moved: set {new!r} instead")
    if overrides is not None and not isinstance(overrides, Mapping):
        overrides = parse_set_options(list(overrides))
    for key, value in (overrides or {}).items():
        target_type(key)  # a typo fails here, with a suggestion
        _set_dotted(data, key, value)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where)) from None
