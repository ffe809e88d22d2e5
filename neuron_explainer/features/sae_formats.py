"""Load sparse autoencoders and transcoders from the common published formats into a SparseCoder.

Imports torch, numpy and safetensors; never sae_lens, sparsify or the Hugging Face hub (give a local folder).
The format is detected from the files present:

- `saelens`: FOLDER/cfg.json + FOLDER/sae_weights.safetensors. Tensors W_enc (d_in, n), b_enc, W_dec (n, d_out),
  b_dec, and threshold (or log_threshold) for jumprelu, b_gate/r_mag/b_mag for gated, W_skip (d_out, d_in) for
  skip transcoders, scaling_factor (per latent, folded into W_dec). Config fields are read at the top level or
  under `metadata` (SAELens 6): architecture (missing = standard; pre-6 `activation_fn[_str]` "topk" with
  `activation_fn_kwargs.k` = topk), k, rescale_acts_by_decoder_norm, apply_b_dec_to_input (default true),
  normalize_activations, hook_name / hook_point, hook_name_out, hf_hook_name(_out), hook_head_index,
  model_from_pretrained_kwargs.
- `sparsify` (EleutherAI): FOLDER/cfg.json (d_in, k, num_latents or expansion_factor, transcode,
  skip_connection) + FOLDER/sae.safetensors (encoder.weight (n, d_in), encoder.bias, W_dec (n, d_in), b_dec,
  W_skip (d_in, d_in)). Top-k of relu(encoder(x - b_dec)), without the b_dec shift for transcoders.
- `gemma_scope_npz`: FILE.npz or FOLDER/params.npz with W_enc, W_dec, b_enc, b_dec, threshold (JumpReLU, no b_dec
  shift). It names no hook: `hook` is required.
- `gemma_scope_2`: FOLDER/config.json (hf_hook_point_in/out, type, architecture "jump_relu") +
  FOLDER/params.safetensors (w_enc, w_dec, b_enc, b_dec, threshold).

Choices where the formats leave room (each one tested):
- The hook: the `hook` argument wins; then hf_hook_name; then the TransformerLens name, mapped with
  `resolve_hook` (needs `model_type`). `hook` is `MODULE[:input|output]` or a TL name; a transcoder takes
  `IN->OUT` (or a pair). A sparsify hookpoint is the folder name, relative to the model's base model
  (`layers.5` -> `model.layers.5:output`; a transcoder reads that module's input and writes its output).
- TransformerLens `center_writing_weights` (GPT-2 / GPT-NeoX residual hooks) mean-centres the residual stream
  that the SAE saw. It is applied (x - mean(x) before encoding) only when the config's
  `model_from_pretrained_kwargs` says so or `center_input=True` is passed: SAELens keeps that setting for
  gpt2-small-res-jb in its registry, not in the folder, so such folders need `center_input=True`.
- Refused: normalize_activations "expected_average_only_in" (needs a dataset statistic the folder lacks), a
  head index, unknown architectures or activations, sparsify's signed / groupmax / embed_skip / gram_lookup,
  Gemma Scope 2 affine skip connections (their orientation is undocumented), shape mismatches.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuron_explainer.activations.hookpoints import HOOK_POINTS
from neuron_explainer.errors import ConfigError
from neuron_explainer.features.coder_files import (
    CoderRequest,
    HookArg,
    build_coder,
    content_hash,
    read_json,
    read_safetensors,
    require_tensors,
    resolve_coder_hooks,
)
from neuron_explainer.features.hooks import RESIDUAL_TL_HOOKS, HookSpec, tl_hook_suffix
from neuron_explainer.features.sae import INPUT_NORMS, CoderConfig, SparseCoder

FORMATS = ("saelens", "sparsify", "gemma_scope_npz", "gemma_scope_2")

_SAELENS_ARCHITECTURES = {
    "standard": ("standard", False),
    "topk": ("topk", False),
    "jumprelu": ("jumprelu", False),
    "gated": ("gated", False),
    "transcoder": ("standard", True),
    "skip_transcoder": ("standard", True),
    "jumprelu_transcoder": ("jumprelu", True),
    "jumprelu_skip_transcoder": ("jumprelu", True),
}
_CENTERED_FAMILIES = ("gpt2", "gpt_neox")  # TransformerLens centres writing weights only for LayerNorm models


def load_sparse_coder(
    path: str | Path, *, model_type: str | None = None, hook: HookArg = None, center_input: bool | None = None
) -> SparseCoder:
    """Load an SAE or transcoder from a local folder or file, detecting its format (see the module docstring).

    Args:
        path: the coder's folder (or a file in it, or a Gemma Scope .npz file).
        model_type: transformers model_type of the subject model; needed to map TransformerLens hook names
            and sparsify hookpoints onto modules.
        hook: `MODULE[:input|output]` or a TL name, overriding the file's hook; `IN->OUT` for a transcoder.
        center_input: mean-centre inputs (TransformerLens `center_writing_weights`); None: as the config says.

    Raises:
        ConfigError: missing or unrecognised files, malformed config or tensors, an unsupported architecture
            or normalisation, or a hook that cannot be resolved.
    """
    fmt, location = detect_format(Path(path).expanduser())
    loaders: dict[str, Callable[[Path, CoderRequest], SparseCoder]] = {
        "saelens": _load_saelens,
        "sparsify": _load_sparsify,
        "gemma_scope_npz": _load_gemma_scope_npz,
        "gemma_scope_2": _load_gemma_scope_2,
    }
    return loaders[fmt](location, CoderRequest(model_type, hook, center_input))


def detect_format(path: Path) -> tuple[str, Path]:
    """(format, location) of a coder: a folder, or the .npz file for gemma_scope_npz."""
    if not path.exists():
        raise ConfigError(f"sparse coder not found: {path}")
    if path.is_file():
        if path.suffix == ".npz":
            return "gemma_scope_npz", path
        path = path.parent
    names = {p.name for p in path.iterdir()}
    if "cfg.json" in names and "sae_weights.safetensors" in names:
        return "saelens", path
    if "cfg.json" in names and "sae.safetensors" in names:
        return "sparsify", path
    if "params.npz" in names:
        return "gemma_scope_npz", path / "params.npz"
    if "config.json" in names and "params.safetensors" in names:
        return "gemma_scope_2", path
    if "cfg.json" in names:
        raise ConfigError(
            f"{path}: cfg.json without weights (sae_weights.safetensors for SAELens, sae.safetensors for sparsify)"
        )
    raise ConfigError(
        f"{path}: no sparse coder found; expected cfg.json + sae_weights.safetensors (SAELens), cfg.json + "
        "sae.safetensors (sparsify), params.npz (Gemma Scope) or config.json + params.safetensors (Gemma Scope 2)"
    )


def _field(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    """A config value at the top level or under SAELens 6's `metadata`, first key present wins."""
    meta = cfg.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    for key in keys:
        for source in (cfg, meta):
            if source.get(key) is not None:
                return source[key]
    return default


def _saelens_architecture(cfg: dict[str, Any], where: Path) -> tuple[str, bool, int | None]:
    name = cfg.get("architecture") or "standard"
    if name not in _SAELENS_ARCHITECTURES:
        raise ConfigError(
            f"{where}: unsupported SAELens architecture {name!r}; supported: {sorted(_SAELENS_ARCHITECTURES)}"
        )
    arch, transcoder = _SAELENS_ARCHITECTURES[name]
    activation = _field(cfg, "activation_fn", "activation_fn_str", default="relu")
    kwargs = _field(cfg, "activation_fn_kwargs", default={}) or {}
    if name == "standard" and activation == "topk":
        arch = "topk"
    elif activation not in ("relu", "topk") or (activation == "topk" and arch != "topk"):
        raise ConfigError(f"{where}: unsupported activation function {activation!r} for architecture {name!r}")
    k = _field(cfg, "k", default=kwargs.get("k")) if arch == "topk" else None
    return arch, transcoder, k


def _saelens_norm(cfg: dict[str, Any], where: Path) -> str:
    value = _field(cfg, "normalize_activations", default="none")
    if isinstance(value, bool):  # SAELens < 6 wrote a bool: true was the dataset-statistic normalisation
        value = "expected_average_only_in" if value else "none"
    if value == "expected_average_only_in":
        raise ConfigError(
            f"{where}: normalize_activations='expected_average_only_in' scales inputs by a dataset statistic the "
            "folder does not contain; fold it into the weights first (SAELens: fold_activation_norm_scaling_factor)"
        )
    if value not in INPUT_NORMS:
        raise ConfigError(f"{where}: unsupported normalize_activations {value!r}; supported: {INPUT_NORMS}")
    return value


def _saelens_tensors(raw: dict[str, torch.Tensor], cfg: dict[str, Any], arch: str, where: Path) -> dict[str, Any]:
    tensors = dict(raw)
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").float().exp()
    require_tensors(tensors, ["W_enc", "W_dec", "b_dec"], where)
    W_dec = tensors["W_dec"].float()
    scaling = tensors.pop("scaling_factor", None)
    if scaling is not None and not torch.allclose(scaling.float(), torch.ones_like(scaling.float())):
        if not _field(cfg, "finetuning_scaling_factor", default=False):
            raise ConfigError(f"{where}: scaling_factor is present but finetuning_scaling_factor is not set")
        W_dec = W_dec * scaling.float()[:, None]  # SAELens multiplies the latents by it before decoding
    if arch == "topk" and _field(cfg, "rescale_acts_by_decoder_norm", default=False):
        norms = W_dec.norm(dim=-1).clamp(min=1e-12)
        tensors["latent_scale"], W_dec = norms, W_dec / norms[:, None]
    tensors["W_dec"] = W_dec
    return tensors


def _check_declared(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], where: Path) -> None:
    declared = {"d_in": (0, "W_enc"), "d_sae": (1, "W_enc"), "d_out": (1, "W_dec")}
    for key, (dim, name) in declared.items():
        value = cfg.get(key)
        if value is not None and tensors[name].dim() == 2 and int(value) != tensors[name].shape[dim]:
            raise ConfigError(f"{where}: config says {key}={value} but {name} has shape {tuple(tensors[name].shape)}")


def _load_saelens(folder: Path, req: CoderRequest) -> SparseCoder:
    cfg = read_json(folder / "cfg.json")
    arch, transcoder, k = _saelens_architecture(cfg, folder)
    norm = _saelens_norm(cfg, folder)
    if _field(cfg, "hook_head_index", "hook_point_head_index") is not None:
        raise ConfigError(f"{folder}: SAEs on a single attention head (hook_head_index) are not supported")
    if transcoder and norm != "none":
        raise ConfigError(f"{folder}: a transcoder with normalize_activations={norm!r} is not supported")
    tl_in = _field(cfg, "hook_name", "hook_point")
    name_in = _field(cfg, "hf_hook_name") or tl_in
    name_out = (_field(cfg, "hf_hook_name_out") or _field(cfg, "hook_name_out")) if transcoder else None
    hook_in, hook_out, transcoder = resolve_coder_hooks(req, name_in, name_out, transcoder, folder)
    tensors = _saelens_tensors(read_safetensors(folder / "sae_weights.safetensors"), cfg, arch, folder)
    _check_declared(cfg, tensors, folder)
    center = req.center_input
    if center is None:
        wants = bool((_field(cfg, "model_from_pretrained_kwargs", default={}) or {}).get("center_writing_weights"))
        read_tl = req.hook is None and name_in == tl_in and tl_hook_suffix(str(tl_in)) in RESIDUAL_TL_HOOKS
        center = wants and read_tl and req.model_type in _CENTERED_FAMILIES
    config = CoderConfig(
        architecture=arch,
        hook_in=hook_in,
        hook_out=hook_out,
        transcoder=transcoder,
        k=k,
        subtract_decoder_bias=bool(_field(cfg, "apply_b_dec_to_input", default=not transcoder)),
        input_norm=norm,
        center_input=center,
        model_type=req.model_type,
        format="saelens",
        content_hash=content_hash([folder / "cfg.json", folder / "sae_weights.safetensors"]),
        source=str(folder),
        extra={
            "file_architecture": cfg.get("architecture"),
            "file_hook_name": tl_in,
            "file_hook_name_out": _field(cfg, "hook_name_out"),
            "file_hf_hook_name": _field(cfg, "hf_hook_name"),
            "model_name": _field(cfg, "model_name"),
            "sae_lens_version": _field(cfg, "sae_lens_version"),
        },
    )
    return build_coder(config, tensors)


def _sparsify_hookpoint(folder: Path, req: CoderRequest) -> str | None:
    name = folder.parent.name if re.fullmatch(r"seed\d+", folder.name) else folder.name
    if req.hook is not None:
        return None
    if req.model_type is None:
        raise ConfigError(
            f"{folder}: sparsify hookpoint {name!r} is relative to the base model; give model_type (e.g. llama) "
            "or hook='MODULE[:input|output]'"
        )
    if req.model_type not in HOOK_POINTS:
        raise ConfigError(f"unsupported model type {req.model_type!r}; supported: {', '.join(sorted(HOOK_POINTS))}")
    return HOOK_POINTS[req.model_type].layers_path.split(".")[0] + "." + name


def _load_sparsify(folder: Path, req: CoderRequest) -> SparseCoder:
    cfg = read_json(folder / "cfg.json")
    for flag in ("signed", "embed_skip", "gram_lookup"):
        if cfg.get(flag):
            raise ConfigError(f"{folder}: sparsify option {flag}=true is not supported")
    if cfg.get("activation", "topk") != "topk":
        raise ConfigError(f"{folder}: sparsify activation {cfg['activation']!r} is not supported (only topk)")
    if "d_in" not in cfg:
        raise ConfigError(f"{folder}/cfg.json: missing d_in")
    raw = read_safetensors(folder / "sae.safetensors")
    require_tensors(raw, ["encoder.weight", "encoder.bias", "W_dec", "b_dec"], folder)
    transcode = bool(cfg.get("transcode", False))
    module = _sparsify_hookpoint(folder, req)
    name_in: str | None = None
    name_out: str | None = None
    if module is not None:  # else the `hook` argument names both
        name_in, name_out = (f"{module}:input", f"{module}:output") if transcode else (f"{module}:output", None)
    hook_in, hook_out, transcode = resolve_coder_hooks(req, name_in, name_out, transcode, folder)
    n_latents = int(cfg.get("num_latents") or int(cfg["d_in"]) * int(cfg.get("expansion_factor", 32)))
    if tuple(raw["encoder.weight"].shape) != (n_latents, int(cfg["d_in"])):
        raise ConfigError(
            f"{folder}: encoder.weight has shape {tuple(raw['encoder.weight'].shape)}, config says "
            f"({n_latents}, {cfg['d_in']}) (num_latents, d_in)"
        )
    tensors = {
        "W_enc": raw["encoder.weight"].float().T,
        "b_enc": raw["encoder.bias"],
        "W_dec": raw["W_dec"],
        "b_dec": raw["b_dec"],
        "W_skip": raw.get("W_skip"),
    }
    config = CoderConfig(
        architecture="topk",
        hook_in=hook_in,
        hook_out=hook_out,
        transcoder=transcode,
        k=int(cfg.get("k", 32)),
        subtract_decoder_bias=not transcode,
        model_type=req.model_type,
        format="sparsify",
        content_hash=content_hash([folder / "cfg.json", folder / "sae.safetensors"]),
        source=str(folder),
        extra={"hookpoint": module or "", "skip_connection": bool(cfg.get("skip_connection", False))},
    )
    return build_coder(config, tensors)


def _jumprelu_config(
    req: CoderRequest, hooks: tuple[HookSpec, HookSpec, bool], fmt: str, files: list[Path]
) -> CoderConfig:
    hook_in, hook_out, transcoder = hooks
    return CoderConfig(
        architecture="jumprelu",
        hook_in=hook_in,
        hook_out=hook_out,
        transcoder=transcoder,
        model_type=req.model_type,
        format=fmt,
        content_hash=content_hash(files),
        source=str(files[-1].parent if fmt == "gemma_scope_2" else files[-1]),
    )


def _load_gemma_scope_npz(file: Path, req: CoderRequest) -> SparseCoder:
    try:
        with np.load(file) as data:
            arrays = {key.lower(): np.asarray(data[key]) for key in data.files}
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {file}: {e}") from e
    require_tensors(arrays, ["w_enc", "w_dec", "b_enc", "b_dec", "threshold"], file)
    hooks = resolve_coder_hooks(req, None, None, None, file)
    tensors = {
        "W_enc": arrays["w_enc"],
        "W_dec": arrays["w_dec"],
        "b_enc": arrays["b_enc"],
        "b_dec": arrays["b_dec"],
        "threshold": arrays["threshold"],
    }
    return build_coder(
        _jumprelu_config(req, hooks, "gemma_scope_npz", [file]),
        {name: torch.from_numpy(array.astype(np.float32)) for name, array in tensors.items()},
    )


def _load_gemma_scope_2(folder: Path, req: CoderRequest) -> SparseCoder:
    cfg = read_json(folder / "config.json")
    if cfg.get("architecture", "jump_relu") != "jump_relu":
        raise ConfigError(f"{folder}: unsupported Gemma Scope 2 architecture {cfg['architecture']!r} (only jump_relu)")
    raw = read_safetensors(folder / "params.safetensors")
    if cfg.get("affine_connection") or "affine_skip_connection" in raw:
        raise ConfigError(f"{folder}: affine skip connections are not supported (their orientation is undocumented)")
    require_tensors(raw, ["w_enc", "w_dec", "b_enc", "b_dec", "threshold"], folder)
    kind = cfg.get("type")
    transcoder = None if kind is None else kind == "transcoder"
    name_out = cfg.get("hf_hook_point_out") if transcoder else None
    hooks = resolve_coder_hooks(req, cfg.get("hf_hook_point_in"), name_out, transcoder, folder)
    tensors = {"W_enc": raw["w_enc"], "W_dec": raw["w_dec"], "b_enc": raw["b_enc"], "b_dec": raw["b_dec"]}
    tensors["threshold"] = raw["threshold"]
    files = [folder / "config.json", folder / "params.safetensors"]
    return build_coder(_jumprelu_config(req, hooks, "gemma_scope_2", files), tensors)
