"""The typed run configuration: one frozen, extra-forbidding pydantic model per section.

Imports nothing heavy (no torch, no transformers) so that `--help` and config validation are instant.
Loading YAML and applying overrides is `neuron_explainer.config.loading`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class FrozenConfig(BaseModel):
    """Base of every config section: frozen, unknown keys are errors, field docstrings become descriptions."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class CorpusConfig(FrozenConfig):
    """Where the harvest text comes from."""

    source: str = "builtin:english-prose"
    """`builtin:<name>`, a Hugging Face dataset id, or local .txt/.jsonl/.json/.parquet files (a path,
    a directory or a glob; comma-separate several). A .txt file is one document."""
    name: str | None = None
    """Dataset configuration name (hub datasets only)."""
    split: str = "train"
    """Dataset split (hub datasets only)."""
    text_column: str = "text"
    """Column holding the document text (hub, jsonl and parquet sources)."""
    revision: str | None = None
    """Dataset revision (hub datasets only); recorded in the manifest."""
    excerpts_per_doc: int | None = Field(default=None, ge=1)
    """Take at most this many excerpts from one document (None: every non-overlapping window)."""


class HarvestConfig(FrozenConfig):
    """What to harvest and how. Fields marked non-semantic do not change the result."""

    model: str = "builtin:gemma3-270m"
    """`builtin:<name>`, a Hugging Face hub id, a local model directory, or a .gguf file."""
    model_revision: str | None = None
    """Hub revision (branch, tag or commit) of the model."""
    corpus: CorpusConfig = CorpusConfig()
    layers: list[int] | None = None
    """Layers to harvest (None: all)."""
    n_excerpts: int = Field(default=50_000, ge=1)
    """Number of excerpts to harvest; fewer if the corpus runs out (with a warning)."""
    excerpt_len: int = Field(default=64, ge=2)
    """Tokens per excerpt. Excerpts never cross a document boundary."""
    top_k: int = Field(default=20, ge=1)
    """Excerpts kept per neuron with the highest maximum activation."""
    random_k: int = Field(default=20, ge=0)
    """Uniformly random excerpts kept per neuron."""
    quantile_k: int = Field(default=5, ge=0)
    """Random excerpts kept per neuron in each of the 5 excerpt-maximum quantile buckets."""
    quantile_pilot_excerpts: int = Field(default=2_000, ge=2)
    """Excerpts whose maxima fix the quantile boundaries (capped at half of n_excerpts). Bucket samples
    are drawn from the excerpts after them, so that one pass suffices and memory stays bounded."""
    seed: int = 0
    """Seed of excerpt offsets and of the random and quantile-bucket samples."""
    prepend_bos: bool | None = None
    """Feed a BOS token before each excerpt (not part of the record). None: if the tokenizer adds one."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the subject model runs in."""
    record_dtype: Literal["float16", "float32"] = "float16"
    """Dtype of stored per-token activations (float16 halves disk use; about 3 significant digits)."""
    device: str = "cpu"
    """Torch device (`cpu`, `cuda`, `cuda:1`, ...). Non-semantic."""
    batch_size: int = Field(default=16, ge=1)
    """Excerpts per forward pass. Non-semantic."""
    checkpoint_seconds: float = Field(default=120.0, ge=0)
    """Save resumable state at most this often (0: after every batch). Non-semantic."""
    excerpt_range: tuple[int, int] | None = None
    """Harvest only excerpts [start, stop) of the run's excerpt stream: a corpus shard to merge later."""
    features: str = "mlp"
    """What to harvest: `mlp` (MLP neurons), `sae:PATH` (latents of a sparse autoencoder or transcoder:
    SAELens, sparsify or Gemma Scope files, docs/features.md) or `directions:FILE` (directions over one
    layer's MLP activations)."""
    hook: str | None = None
    """For `sae:`, where the coder reads (and writes): `MODULE[:input|output]`, a TransformerLens hook name,
    or `IN->OUT` for a transcoder; overrides the file's own hook."""
    whiten: bool = True
    """For `directions:`, whether the directions are over whitened activations (a^T Sigma^-1/2 theta)."""
    covariance_layers: list[int] = []
    """Layers whose MLP activations' covariance (count, mean and co-moment matrix, float64) the harvest also
    accumulates over its excerpts, into <run>/covariance/layer-LLL.npz: what whitened directions need
    (`directions:FILE`, the `directions` command). Any layers of the model; needs `features: mlp`."""

    @field_validator("layers")
    @classmethod
    def _sort_layers(cls, layers: list[int] | None) -> list[int] | None:
        return None if layers is None else sorted(layers)

    @field_validator("covariance_layers")
    @classmethod
    def _check_covariance_layers(cls, layers: list[int]) -> list[int]:
        if any(layer < 0 for layer in layers) or len(set(layers)) != len(layers):
            raise ValueError(f"covariance_layers must be distinct layers >= 0, got {layers}")
        return sorted(layers)

    @model_validator(mode="after")
    def _check(self) -> HarvestConfig:
        if self.layers is not None:
            if not self.layers:
                raise ValueError("layers must not be empty (omit it to harvest every layer)")
            if any(layer < 0 for layer in self.layers):
                raise ValueError(f"layers must be >= 0, got {self.layers}")
            if len(set(self.layers)) != len(self.layers):
                raise ValueError(f"layers has duplicates: {self.layers}")
        if self.excerpt_range is not None:
            start, stop = self.excerpt_range
            if not 0 <= start < stop <= self.n_excerpts:
                raise ValueError(f"excerpt_range must satisfy 0 <= start < stop <= n_excerpts, got {start, stop}")
        return self

    @property
    def pilot_excerpts(self) -> int:
        """Number of leading excerpts that fix the quantile boundaries."""
        return max(1, min(self.quantile_pilot_excerpts, self.n_excerpts // 2))


NON_SEMANTIC_HARVEST_FIELDS = frozenset({"device", "batch_size", "checkpoint_seconds"})


class ExplainConfig(FrozenConfig):
    """Explainer settings."""

    explainer: str = "local:builtin:smollm2-135m-instruct"
    """Back-end spec: `local:<model>`, `openai:<model>@<base-url>` or `fake`."""
    n_samples: int = Field(default=1, ge=1)
    """Explanations sampled per neuron."""
    temperature: float = Field(default=1.0, ge=0)
    max_tokens: int = Field(default=60, ge=1)
    seed: int | None = 0
    """Sampling seed (local back end; servers may ignore it)."""
    prompt_version: str = "v1"


class SimulateConfig(FrozenConfig):
    """Simulator settings."""

    simulator: str = "local:builtin:gemma3-270m"
    """Back-end spec; all-at-once and one-at-a-time simulation need prompt logprobs."""
    method: Literal["all_at_once", "one_at_a_time", "logprob_free"] = "all_at_once"
    """all_at_once: one pass per excerpt; one_at_a_time: one request per token; logprob_free: the model
    writes the levels (for chat-only back ends)."""
    max_level: int | None = Field(default=None, ge=1, le=10)
    """Top of the label scale (None: 10 if the tokenizer has a single "10" token, else 9)."""
    top_k: int = Field(default=20, ge=1)
    """Top next-token logprobs read at each slot."""
    prompt_version: str = "v1"
    next_token_prompt_version: str = "next_token_v1"
    """Simulator template for explanations written in the next-token view."""
    calibrate: bool = True
    """Also simulate the calibration split and fit the linear map to activations (needed by ablation)."""


class ScoreConfig(FrozenConfig):
    """Correlation scoring."""

    scorers: list[str] = ["top_and_random", "random_only"]
    """Which scorers (neuron_explainer/scoring/scorers.py) to compute for every simulation."""

    @field_validator("scorers")
    @classmethod
    def _known(cls, scorers: list[str]) -> list[str]:
        from neuron_explainer.scoring.scorers import SCORERS

        unknown = [s for s in scorers if s not in SCORERS]
        if unknown or not scorers:
            raise ValueError(f"scorers must be a non-empty list from {list(SCORERS)}, got {scorers}")
        return scorers


class AblateConfig(FrozenConfig):
    """Ablation scoring settings (the subject model runs in process)."""

    enabled: bool = False
    """Whether `run` scores by ablation after correlation scoring."""
    batch_rows: int = Field(default=16, ge=1)
    """Excerpt rows per replaced forward. Non-semantic."""
    max_excerpts: int = Field(default=32, ge=1)
    """Distinct excerpts per clean forward; bounds memory (excerpts x tokens x vocabulary). Non-semantic."""


class ReviseConfig(FrozenConfig):
    """Explanation revision (test sentences from the explainer, real activations, revised explanations)."""

    enabled: bool = False
    """Whether `run` revises the selected neurons' explanations (after simulate, before score)."""
    arms: list[Literal["revised", "reexplain", "random_revision"]] = ["revised", "reexplain", "random_revision"]
    sentence_tokens: int = Field(default=400, ge=16)
    """Completion budget for the list of 10 test sentences."""
    prompt_version: str = "v1"


class BaselinesConfig(FrozenConfig):
    """Explanation-free baselines (weights, lookup table), stored and scored like explanations."""

    enabled: bool = False
    """Whether `run` computes them for the selected neurons (before scoring)."""
    kinds: list[Literal["weights", "lookup"]] = ["weights", "lookup"]
    held_out_excerpts: int = Field(default=500, ge=1)
    """Corpus excerpts after the harvested ones, averaged into the lookup table."""
    batch_size: int = Field(default=16, ge=1)
    """Held-out excerpts per forward. Non-semantic."""


class OutputTokensConfig(FrozenConfig):
    """The tokens each selected neuron's output weights promote and suppress (from weights, no corpus)."""

    enabled: bool = False
    """Whether `run` computes them for the selected neurons (the viewer shows them)."""
    k: int = Field(default=10, ge=1, le=100)
    """Tokens kept on each side."""


class ModelShape(FrozenConfig):
    """Layers and MLP neurons per layer, for planning a model whose config is not available offline."""

    n_layers: int = Field(ge=1)
    """Transformer blocks."""
    n_neurons: int = Field(ge=1)
    """MLP neurons per block (the hidden width of the MLP)."""


class PlanConfig(FrozenConfig):
    """Throughput assumptions of `run --dry-run` (set them from a measured pilot run)."""

    harvest_tokens_per_second: float = Field(default=600.0, gt=0)
    """Subject-model tokens harvested per second (the harvest prints it when it ends)."""
    llm_calls_per_second: float = Field(default=1.0, gt=0)
    """LLM requests completed per second over all back ends."""


class PriceConfig(FrozenConfig):
    """What one back end costs, in USD per million tokens."""

    prompt: float = Field(ge=0)
    """USD per million prompt tokens."""
    completion: float = Field(ge=0)
    """USD per million completion tokens."""

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for that many tokens."""
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1e6


class LLMConfig(FrozenConfig):
    """How every LLM back end is wrapped: devices, limits, retries, timeouts, credentials and the cache.

    These apply to every back end a run builds (explainer, simulator, judge), in the library as in the
    CLI. None of them changes a result, so none enters a hash.
    """

    device: str = "cpu"
    """Torch device of in-process (`local:`) models."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of in-process (`local:`) models."""
    slot_batch_tokens: int = Field(default=2048, ge=64)
    """In-process simulation: most padded suffix tokens per forward (rows x longest excerpt prompt after the
    shared prefix). Raise it on a GPU (e.g. 65536); results do not depend on it."""
    generate_batch_tokens: int = Field(default=16384, ge=64)
    """In-process explanation: most padded tokens (rows x (longest prompt + max_tokens)) generated together."""
    max_in_flight: int = Field(default=4, ge=1)
    """Requests outstanding at once per back end; also the number of units a stage keeps in flight."""
    timeout_seconds: float = Field(default=120.0, gt=0)
    """One request's time limit; a request past it is retried like a server error."""
    max_attempts: int = Field(default=6, ge=1)
    """Attempts per request (retryable failures only: timeouts, 408/409/429/5xx, malformed answers)."""
    max_backoff_seconds: float = Field(default=30.0, ge=0)
    """Cap of the jittered exponential wait between attempts."""
    replica_cooldown_seconds: float = Field(default=2.0, gt=0)
    """How long a replica (of a spec with several base URLs) that failed is left out; doubled with each
    failure in a row."""
    replica_max_cooldown_seconds: float = Field(default=120.0, gt=0)
    """Cap of a failing replica's cool-down."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key of HTTP back ends (read when a back end is built; never stored)."""
    cache: bool = True
    """Cache responses in <out>/cache/llm.sqlite (sampled explanations replay exactly on rerun)."""
    cache_logprobs: bool = False
    """Also cache prompt logprobs (large: hundreds of KB per simulated excerpt)."""


class Shard(FrozenConfig):
    """One worker's share of every stage after the harvest: the neurons whose stable hash is `index` mod `count`.

    Written `i/N` in YAML, `--set` and `--shard` (e.g. `--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`).
    """

    index: int = Field(ge=0)
    """This worker's shard, 0-based."""
    count: int = Field(ge=1)
    """How many shards the run is split into."""

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, dict | Shard):
            return value
        head, sep, tail = str(value).strip().partition("/")
        if not (sep and head.strip().isdigit() and tail.strip().isdigit()):
            raise ValueError("a shard looks like i/N with 0 <= i < N, e.g. 0/8")
        return {"index": int(head), "count": int(tail)}

    @model_validator(mode="after")
    def _check(self) -> Shard:
        if self.index >= self.count:
            raise ValueError(f"shard {self.index}/{self.count}: the index must be below the count (0 <= i < N)")
        return self

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


class WorkersConfig(FrozenConfig):
    """How several workers share a run: a shard of the units each, and unit claims in a shared run directory.

    None of these changes a result (README "Many workers").
    """

    shard: Shard | None = None
    """This worker's shard of every stage after the harvest (None: every unit). All the units of one
    neuron fall in one shard."""
    claim: bool = True
    """Claim each unit under <run>/claims/<stage>/ before working on it, so that workers sharing the run
    directory never do the same unit (off: one worker per directory or per shard)."""
    claim_expiry_seconds: float = Field(default=300.0, gt=0)
    """A claim not refreshed for this long belongs to a dead worker and is taken over. Live workers refresh
    theirs every quarter of it; keep it well above a stalled filesystem's pauses."""


class RunConfig(FrozenConfig):
    """One run: where it writes and each stage's settings."""

    out: str = "runs/default"
    """Run directory."""
    harvest: HarvestConfig = HarvestConfig()
    show_neurons: int = Field(default=3, ge=0)
    """How many neurons `run` prints after the harvest (their top excerpts)."""
    neurons: str | None = None
    """Neurons to explain, simulate and score: `12:0-3,6:314`, `layer:5`, `all` or `sample:N` (None: harvest
    only). See neuron_explainer/selection.py."""
    explain: ExplainConfig = ExplainConfig()
    simulate: SimulateConfig = SimulateConfig()
    score: ScoreConfig = ScoreConfig()
    ablate: AblateConfig = AblateConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    revise: ReviseConfig = ReviseConfig()
    output_tokens: OutputTokensConfig = OutputTokensConfig()
    llm: LLMConfig = LLMConfig()
    workers: WorkersConfig = WorkersConfig()
    """Shards and unit claims, for several workers on one run (README "Many workers")."""
    subject_device: str = "cpu"
    """Device of the subject model when a stage after the harvest needs it (ablate, baselines, revise)."""
    prompts_dir: str | None = None
    """Directory of prompt templates (None: the repository's prompts/)."""
    failure_budget: float = Field(default=0.1, ge=0)
    """Failed units a stage may have before the run stops: a fraction of its units below 1 (at least one
    failure is always tolerated), a count from 1."""
    prices: dict[str, PriceConfig] = {}
    """Back-end spec -> price, to report the cost of a run (unpriced back ends are reported as tokens only)."""
    model_shape: ModelShape | None = None
    """The subject model's shape, used by `--dry-run` only when its config cannot be read offline."""
    plan: PlanConfig = PlanConfig()
    """Throughput assumptions of `run --dry-run`."""


FEATURE_DEFAULTS: dict[str, Any] = {"features": "mlp", "hook": None, "whiten": True, "covariance_layers": []}
"""Settings added with feature sources (and the covariance for directions); at their defaults they are left
out of the hash, so runs made before them keep theirs."""


def harvest_semantic_hash(cfg: HarvestConfig) -> str:
    """Hash of every harvest setting that can change the output (excludes device, batch size, ...)."""
    data = cfg.model_dump(mode="json", exclude=set(NON_SEMANTIC_HARVEST_FIELDS))
    for key, default in FEATURE_DEFAULTS.items():
        if data.get(key) == default:
            del data[key]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def harvest_config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    """`key: old -> new` for every semantic harvest setting that differs (nested keys dotted)."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            sub = harvest_config_diff(a, b, f"{prefix}{key}.")
            if sub:
                diffs.append(sub)
        elif a != b and key not in NON_SEMANTIC_HARVEST_FIELDS:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return "; ".join(diffs)
