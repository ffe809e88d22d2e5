"""Helpers shared by the sparse-coder loaders: reading files, hashing them, choosing the hooks. No format logic."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neuron_explainer.errors import ConfigError
from neuron_explainer.features.hooks import HookSpec, resolve_hook
from neuron_explainer.features.sae import CoderConfig, SparseCoder

HookArg = str | Sequence[str] | None
"""A hook override: `MODULE[:input|output]` or a TL name; `IN->OUT` or an (in, out) pair for a transcoder."""


@dataclass(frozen=True)
class CoderRequest:
    """What the caller of load_sparse_coder asked for, besides the path."""

    model_type: str | None
    """transformers model_type, to map TransformerLens names and sparsify hookpoints."""
    hook: HookArg
    """Hook override: one name, `IN->OUT`, or an (in, out) pair."""
    center_input: bool | None
    """Mean-centre inputs (TransformerLens centring); None: as the config says."""


def content_hash(files: Sequence[Path]) -> str:
    """sha256 (hex) over the files' names and bytes, in name order."""
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda p: p.name):
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or ConfigError."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, or ConfigError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e


def require_tensors(tensors: dict[str, Any], names: Sequence[str], where: Path) -> None:
    """Raise ConfigError naming the tensors missing from `tensors`."""
    missing = [name for name in names if name not in tensors]
    if missing:
        raise ConfigError(f"{where}: missing tensor(s) {missing}; the file has {sorted(tensors)}")


def split_hook_arg(hook: HookArg) -> tuple[str, str | None] | None:
    """(in, out or None) from a hook argument, None when there is none."""
    if hook is None:
        return None
    if not isinstance(hook, str):
        pair = list(hook)
        if len(pair) != 2:
            raise ConfigError(f"hook must be one name or an (in, out) pair, got {hook!r}")
        return str(pair[0]), str(pair[1])
    if "->" in hook:
        hook_in, hook_out = hook.split("->", 1)
        return hook_in.strip(), hook_out.strip()
    return hook.strip(), None


def resolve_coder_hooks(
    req: CoderRequest, name_in: str | None, name_out: str | None, transcoder: bool | None, where: Path
) -> tuple[HookSpec, HookSpec, bool]:
    """Hooks of a coder from its file's names and the `hook` argument; transcoder=None: the file does not say."""
    override = split_hook_arg(req.hook)
    if override is not None:
        name_in, name_out = override
        if transcoder is True and name_out is None:
            raise ConfigError(f"{where} is a transcoder: give both hooks, hook='IN->OUT'")
        if transcoder is False and name_out is not None:
            raise ConfigError(f"{where} is an autoencoder: give one hook, not IN->OUT")
    if not name_in:
        raise ConfigError(f"{where} names no hook: pass hook='MODULE[:input|output]' (e.g. model.layers.5:output)")
    hook_in = resolve_hook(req.model_type, name_in)
    hook_out = resolve_hook(req.model_type, name_out) if name_out else hook_in
    if transcoder is None:
        transcoder = hook_out != hook_in
    elif transcoder and not name_out:
        raise ConfigError(f"{where} is a transcoder but names no output hook: pass hook='IN->OUT'")
    return hook_in, (hook_out if transcoder else hook_in), transcoder


def build_coder(config: CoderConfig, tensors: Mapping[str, torch.Tensor | None]) -> SparseCoder:
    """SparseCoder with the loader-level checks; a None tensor counts as absent."""
    coder = SparseCoder(config, tensors)
    if coder.is_transcoder and config.subtract_decoder_bias:
        raise ConfigError(f"{config.source}: a transcoder cannot subtract b_dec (it has the output's width)")
    return coder
