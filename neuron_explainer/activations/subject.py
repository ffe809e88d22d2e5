"""The subject model of a finished harvest, for the stages after it (revise, baselines, ablate).

It owns the one BOS policy: the harvest decides once whether to feed a BOS token before every excerpt
(`wants_bos`), records it in the manifest (`prepend_bos`), and every later stage that runs the subject
model prepends exactly the same prefix (`HarvestedSubject.prefix`), so their activations are the
harvest's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from neuron_explainer.activations.models import load_subject_model
from neuron_explainer.activations.text import decode_tokens
from neuron_explainer.config.sections import HarvestConfig
from neuron_explainer.datatypes import ActivationRecord
from neuron_explainer.errors import RunDirError
from neuron_explainer.features.source import FeatureSource, make_source, source_options


def wants_bos(tokenizer: Any, setting: bool | None) -> bool:
    """Whether to prepend BOS to excerpts: the setting if given, else whether the tokenizer adds one itself."""
    if setting is not None:
        return setting
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    return tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def bos_prefix(tokenizer: Any, prepend_bos: bool) -> list[int]:
    """The token ids fed before every excerpt: `[bos]` when the harvest prepended one, else none."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return [int(bos)] if prepend_bos and bos is not None else []


@dataclass
class HarvestedSubject:
    """A loaded subject model with the hook point and excerpt prefix its harvest used."""

    model: Any
    tokenizer: Any
    source: FeatureSource
    """The harvest's feature source (MLP neurons, directions or SAE latents)."""
    prefix: list[int]
    """Token ids prepended to every excerpt (the BOS policy of the harvest)."""
    excerpt_len: int
    """Tokens per harvested excerpt; new text is cut to this length."""

    @classmethod
    def for_run(cls, manifest: dict[str, Any], *, device: str = "cpu") -> HarvestedSubject:
        """Load the model a run was harvested with.

        Raises:
            ModelError: the model cannot be loaded.
        """
        harvest = manifest["harvest"]
        if "model" not in harvest["config"]:
            raise RunDirError("this run has no subject model to run (its records were imported): the stage needs one")
        cfg = HarvestConfig.model_validate(harvest["config"])
        subject = load_subject_model(cfg.model, revision=cfg.model_revision, dtype=cfg.dtype, device=device)
        source = make_source(cfg.features, subject.model, subject.hook_point, **source_options(cfg))
        stored = harvest.get("features", {}).get("content_sha256")
        if stored is not None and source.provenance().get("content_sha256") != stored:
            raise RunDirError(
                f"the feature file of {cfg.features!r} changed since the harvest: its content hash differs from "
                "the manifest's"
            )
        return cls(
            subject.model,
            subject.tokenizer,
            source,
            bos_prefix(subject.tokenizer, bool(harvest.get("prepend_bos"))),
            int(harvest["excerpt_len"]),
        )

    def with_prefix(self, token_ids: list[int]) -> list[int]:
        """An excerpt's ids as the model is fed them."""
        return self.prefix + list(token_ids)

    @torch.no_grad()
    def record(self, text: str, layer: int, neuron: int) -> ActivationRecord:
        """Tokens and activations of one neuron on new text (cut to the harvest's excerpt length)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.excerpt_len]
        input_ids = torch.tensor([self.with_prefix(ids)], device=next(self.model.parameters()).device)
        acts = self.source.activations(input_ids, [layer])[layer][0, len(self.prefix) :, neuron]
        return ActivationRecord(tokens=decode_tokens(self.tokenizer, ids), activations=acts.float().tolist())
