"""Arrow schemas of every harvest table, with SCHEMA_VERSION. Documented in docs/data_format.md."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1
"""Bump on any incompatible change to a table below; readers refuse other versions."""

RECORD_KINDS = ("top", "random", "quantile")

EXCERPTS = pa.schema(
    [
        pa.field("excerpt_id", pa.int32(), nullable=False),
        pa.field("doc_index", pa.int64(), nullable=False),
        pa.field("token_start", pa.int32(), nullable=False),
        pa.field("token_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("tokens", pa.list_(pa.string()), nullable=False),
    ]
)


def records_schema(activation_type: pa.DataType) -> pa.Schema:
    """One row per (neuron, kept excerpt); activations stored as float16 or float32."""
    return pa.schema(
        [
            pa.field("layer", pa.int16(), nullable=False),
            pa.field("neuron", pa.int32(), nullable=False),
            pa.field("kind", pa.dictionary(pa.int8(), pa.string()), nullable=False),
            pa.field("bucket", pa.int8(), nullable=True),
            pa.field("rank", pa.int16(), nullable=False),
            pa.field("excerpt_id", pa.int32(), nullable=False),
            pa.field("max_activation", pa.float32(), nullable=False),
            pa.field("activations", pa.list_(activation_type), nullable=False),
        ]
    )


NEURON_STATS = pa.schema(
    [
        pa.field("layer", pa.int16(), nullable=False),
        pa.field("neuron", pa.int32(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("mean", pa.float64(), nullable=False),
        pa.field("variance", pa.float64(), nullable=False),
        pa.field("skewness", pa.float64(), nullable=True),
        pa.field("kurtosis", pa.float64(), nullable=True),
        pa.field("min_activation", pa.float64(), nullable=False),
        pa.field("max_activation", pa.float64(), nullable=False),
        pa.field("quantile_boundaries", pa.list_(pa.float64(), 4), nullable=False),
        pa.field("m2", pa.float64(), nullable=False),
        pa.field("m3", pa.float64(), nullable=False),
        pa.field("m4", pa.float64(), nullable=False),
    ]
)


RECORDS_WRITE_OPTIONS = {
    # float16 activations are near-incompressible as plain bytes; splitting their byte streams and
    # skipping the (always abandoned) dictionary saves about 8% on real records.
    "use_dictionary": ["kind"],
    "use_byte_stream_split": ["activations.list.element", "max_activation"],
}
"""Parquet writer options for `records` tables."""

EXPLANATIONS = pa.schema(
    [
        pa.field("layer", pa.int16(), nullable=False),
        pa.field("neuron", pa.int32(), nullable=False),
        pa.field("explanation_id", pa.string(), nullable=False),
        pa.field("explanation", pa.string(), nullable=False),
        pa.field("explainer", pa.string(), nullable=False),
        pa.field("prompt_version", pa.string(), nullable=False),
        pa.field("view", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int16(), nullable=False),
        pa.field("round", pa.int16(), nullable=False),
        pa.field("params_hash", pa.string(), nullable=False),
    ]
)
"""One row per explanation. `explainer` is `backend:model`."""

SIMULATIONS = pa.schema(
    [
        pa.field("layer", pa.int16(), nullable=False),
        pa.field("neuron", pa.int32(), nullable=False),
        pa.field("explanation_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("record_kind", pa.string(), nullable=False),
        pa.field("excerpt_id", pa.int32(), nullable=False),
        pa.field("expected_values", pa.list_(pa.float32()), nullable=False),
        pa.field("max_level", pa.int8(), nullable=False),
        pa.field("simulator", pa.string(), nullable=False),
        pa.field("prompt_version", pa.string(), nullable=False),
        pa.field("calibration_slope", pa.float64(), nullable=True),
        pa.field("calibration_intercept", pa.float64(), nullable=True),
        pa.field("calibration_error", pa.string(), nullable=True),
    ]
)
"""One row per (explanation, simulated excerpt); expected values in simulated units 0..max_level (uncalibrated).

`split` is `valid` (scored) or `calibration`. The calibration columns repeat on every row of an
explanation: activation ≈ slope * expected value + intercept, fitted on its calibration rows; null
with `calibration_error` set when the fit is impossible, null without it when calibration was off."""

ABLATION_SCORES = pa.schema(
    [
        pa.field("layer", pa.int16(), nullable=False),
        pa.field("neuron", pa.int32(), nullable=False),
        pa.field("explanation_id", pa.string(), nullable=False),
        pa.field("simulator", pa.string(), nullable=False),
        pa.field("scorer", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=True),
        pa.field("jsd_simulation", pa.float64(), nullable=False),
        pa.field("jsd_mean", pa.float64(), nullable=False),
        pa.field("undefined_reason", pa.string(), nullable=True),
        pa.field("per_excerpt_simulation", pa.list_(pa.float64()), nullable=False),
        pa.field("per_excerpt_mean", pa.list_(pa.float64()), nullable=False),
        pa.field("n_excerpts", pa.int32(), nullable=False),
    ]
)
"""One row per (explanation, simulator, scorer); score = 1 - jsd_simulation / jsd_mean (null if undefined)."""

SCORES = pa.schema(
    [
        pa.field("layer", pa.int16(), nullable=False),
        pa.field("neuron", pa.int32(), nullable=False),
        pa.field("explanation_id", pa.string(), nullable=False),
        pa.field("scorer", pa.string(), nullable=False),
        pa.field("correlation", pa.float64(), nullable=True),
        pa.field("explained_variance", pa.float64(), nullable=True),
        pa.field("undefined_reason", pa.string(), nullable=True),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("per_excerpt", pa.list_(pa.float64()), nullable=False),
        pa.field("simulator", pa.string(), nullable=False),
    ]
)
"""One row per (explanation, scorer); `correlation` is null when undefined (see `undefined_reason`)."""

FAILURES = pa.schema(
    [
        pa.field("stage", pa.string(), nullable=False),
        pa.field("layer", pa.int16(), nullable=False),
        pa.field("neuron", pa.int32(), nullable=False),
        pa.field("explanation_id", pa.string(), nullable=True),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("raw", pa.string(), nullable=True),
    ]
)
"""Units that produced nothing usable; retried on the next run, never scored."""


REVISION_SENTENCES = pa.schema(
    [
        pa.field("layer", pa.int16(), nullable=False),
        pa.field("neuron", pa.int32(), nullable=False),
        pa.field("explanation_id", pa.string(), nullable=False),
        pa.field("sentence_idx", pa.int16(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("tokens", pa.list_(pa.string()), nullable=False),
        pa.field("activations", pa.list_(pa.float32()), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("max_level", pa.int8(), nullable=False),
        pa.field("false_positive", pa.bool_(), nullable=False),
        pa.field("explainer", pa.string(), nullable=False),
    ]
)
"""One row per test sentence generated from an explanation: its real activations (subject model), the
split it serves (`revision` or `scoring`), its strongest level on the neuron's 0-10 evidence scale, and
whether it is a false positive (level 0: the explanation predicted a response that did not come)."""

REVISION_SCORES = pa.schema(
    [
        pa.field("layer", pa.int16(), nullable=False),
        pa.field("neuron", pa.int32(), nullable=False),
        pa.field("original_explanation_id", pa.string(), nullable=False),
        pa.field("arm", pa.string(), nullable=False),
        pa.field("explanation_id", pa.string(), nullable=False),
        pa.field("explanation", pa.string(), nullable=False),
        pa.field("scorer", pa.string(), nullable=False),
        pa.field("correlation", pa.float64(), nullable=True),
        pa.field("undefined_reason", pa.string(), nullable=True),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("simulator", pa.string(), nullable=False),
    ]
)
"""One row per (original explanation, arm, scorer). Arms: `original`, `revised` (revision from the test
sentences), `reexplain` (a fresh explanation from the test sentences alone), `random_revision` (revision
from random corpus excerpts where the neuron is active). Scorers: `original_set` (top-and-random valid
excerpts) and `extended_set` (the same plus the scoring test sentences)."""
