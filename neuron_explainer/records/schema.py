"""Arrow schemas of every table of a run, built from records/tables.yaml, and SCHEMA_VERSION.

The YAML file is the one place a column is declared: its type, whether it may be null, and what it
means. The description goes into each field's metadata, so a Parquet file read on its own still says
what its columns are, and the exported dataset's JSON Schemas describe every column. The schemas are
built on first use (module attributes such as `EXPLANATIONS`), never at import. Documented in
docs/data_format.md.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Any

import pyarrow as pa
import yaml

SCHEMA_VERSION = 1
"""Bump on any incompatible change to a table; readers refuse other versions."""

RECORD_KINDS = ("top", "random", "quantile")

RECORDS_WRITE_OPTIONS = {
    # float16 activations are near-incompressible as plain bytes; splitting their byte streams and
    # skipping the (always abandoned) dictionary saves about 8% on real records.
    "use_dictionary": ["kind"],
    "use_byte_stream_split": ["activations.list.element", "max_activation"],
}
"""Parquet writer options for `records` tables."""

_SCALARS = {
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float16": pa.float16(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
}
DEFAULT_ACTIVATION = pa.float32()
"""The record dtype assumed where a table does not depend on it."""
_LIST = re.compile(r"^list<(\w+)>(?:\[(\d+)\])?$")
CONSTANTS = {
    "EXCERPTS": "excerpts",
    "NEURON_STATS": "neuron_stats",
    "EXPLANATIONS": "explanations",
    "SIMULATIONS": "simulations",
    "SCORES": "scores",
    "ABLATION_SCORES": "ablation_scores",
    "REVISION_SENTENCES": "revision_sentences",
    "REVISION_SCORES": "revision_scores",
    "FAILURES": "failures",
}
"""Module attribute -> table, for the fixed schemas (records depend on the record dtype: records_schema)."""


def arrow_type(text: str, activation: pa.DataType = DEFAULT_ACTIVATION) -> pa.DataType:
    """The Arrow type written `text` in tables.yaml (`activation` stands for the run's record dtype).

    Raises:
        ValueError: an unknown type name.
    """
    if text == "dict<string>":
        return pa.dictionary(pa.int8(), pa.string())
    if text == "activation":
        return activation
    match = _LIST.match(text)
    if match:
        inner = arrow_type(match.group(1), activation)
        return pa.list_(inner, int(match.group(2))) if match.group(2) else pa.list_(inner)
    if text not in _SCALARS:
        raise ValueError(f"unknown column type {text!r} in tables.yaml")
    return _SCALARS[text]


@cache
def table_specs() -> dict[str, Any]:
    """tables.yaml as loaded: table -> {description, columns: {name: [type, description]}}."""
    text = resources.files("neuron_explainer.records").joinpath("tables.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def table_schema(name: str, activation: pa.DataType = DEFAULT_ACTIVATION) -> pa.Schema:
    """The Arrow schema of table `name`, each field carrying its description."""
    spec = table_specs()[name]
    fields = []
    for column, (type_text, description) in spec["columns"].items():
        nullable = type_text.endswith("?")
        field_type = arrow_type(type_text.rstrip("?"), activation)
        fields.append(pa.field(column, field_type, nullable=nullable, metadata={"description": description}))
    return pa.schema(fields, metadata={"table": name, "description": spec["description"]})


def table_key(name: str) -> list[str]:
    """The columns that identify a row of stage table `name` (no two rows of a run share them).

    Raises:
        KeyError: `name` declares no key (harvest tables).
    """
    return list(table_specs()[name]["key"])


def table_description(name: str) -> str:
    """What one row of table `name` is."""
    return str(table_specs()[name]["description"])


def records_schema(activation_type: pa.DataType) -> pa.Schema:
    """One row per (neuron, kept excerpt); activations stored as float16 or float32."""
    return table_schema("records", activation_type)


def __getattr__(name: str) -> pa.Schema:
    """`EXPLANATIONS`, `SIMULATIONS`, ...: the fixed schemas, built on first use."""
    if name in CONSTANTS:
        return _fixed(CONSTANTS[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@cache
def _fixed(table: str) -> pa.Schema:
    return table_schema(table)
