"""Input saliency: how much each prompt token contributes to one output token at one position, with Captum.

Attributions are taken on the input embeddings: the output of the model's own embedding module
(`model.get_input_embeddings()`, which already includes Gemma 3's embedding scale), fed back through
`inputs_embeds`, so the attributed forward pass is the model's ordinary one. Two Captum methods:

- `grad_x_input`: `captum.attr.InputXGradient`, gradient of the target times the embedding.
- `integrated_gradients`: `captum.attr.IntegratedGradients` from a baseline (all-zero embeddings, or the embedding
  of one chosen token at every position) to the prompt; its attributions sum to f(input) - f(baseline) up to the
  reported convergence delta.

The target f is the probability (default), log-probability or logit of the chosen token at the chosen position.
Each gives a (T, d_model) attribution; per token we report its sum over the embedding dimensions (signed: positive
pushes the target up) and its L2 norm (unsigned magnitude), plus the L2 norms as shares of their total (Ecco's
presentation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from neuron_explainer.errors import ConfigError
from neuron_explainer.inspect.family import check_position, check_token_ids, encode, single_token_id, token_texts

Method = Literal["grad_x_input", "integrated_gradients"]
Output = Literal["prob", "logprob", "logit"]
METHODS = ("grad_x_input", "integrated_gradients")
OUTPUTS = ("prob", "logprob", "logit")


@dataclass(frozen=True)
class Saliency:
    """Attribution of one output token to every input token. T tokens, d = d_model."""

    tokens: list[str]
    """The prompt's tokens (T)."""
    position: int
    """The position whose next-token prediction is explained (non-negative)."""
    target_id: int
    """The explained output token."""
    target_token: str
    """Its text."""
    method: str
    """`grad_x_input` or `integrated_gradients`."""
    output: str
    """What was attributed: `prob`, `logprob` or `logit` of the target at the position."""
    target_value: float
    """That quantity at the prompt."""
    attributions: np.ndarray
    """float32 (T, d): Captum's attribution per token and embedding dimension; 0 after `position` (causal)."""
    signed: np.ndarray
    """float32 (T,): attributions summed over d; positive = raises the target."""
    l2: np.ndarray
    """float32 (T,): L2 norm of attributions over d (magnitude, no sign)."""
    l2_share: np.ndarray
    """float32 (T,): `l2` divided by its sum over tokens (all 0 when the sum is 0)."""
    baseline_token_id: int | None
    """Integrated gradients baseline: None = zero embeddings, else this token's embedding at every position."""
    n_steps: int | None
    """Integrated gradients steps (None for grad_x_input)."""
    convergence_delta: float | None
    """Integrated gradients: sum of attributions - (f(input) - f(baseline)); None for grad_x_input."""

    def to_frame(self) -> pd.DataFrame:
        """One row per input token: position, token, signed, l2, l2_share."""
        return pd.DataFrame(
            {
                "position": np.arange(len(self.tokens)),
                "token": self.tokens,
                "signed": self.signed,
                "l2": self.l2,
                "l2_share": self.l2_share,
            }
        )


def target_function(model: Any, position: int, target_id: int, output: str) -> Any:
    """f(inputs_embeds (B, T, d)) -> (B,): the chosen output of the target token at the position."""
    # Only the explained position goes through the (often huge) unembedding.
    keep = torch.tensor([position], device=model.get_input_embeddings().weight.device)

    def forward(inputs_embeds: torch.Tensor) -> torch.Tensor:
        out = model(inputs_embeds=inputs_embeds, use_cache=False, logits_to_keep=keep)
        logits = out.logits[:, 0].float()
        if output == "logit":
            return logits[:, target_id]
        logprob = logits.log_softmax(-1)[:, target_id]
        return logprob if output == "logprob" else logprob.exp()

    return forward


def token_scores(attributions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-token scores of a (T, d) attribution: (sum over d, L2 norm over d, L2 norms as shares of their sum)."""
    signed = attributions.sum(-1).astype(np.float32)
    l2 = np.linalg.norm(attributions, axis=-1).astype(np.float32)
    total = float(l2.sum())
    share = l2 / total if total > 0 else np.zeros_like(l2)
    return signed, l2, share.astype(np.float32)


def _check_options(method: str, output: str, n_steps: int) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown saliency method {method!r}; choose one of {', '.join(METHODS)}")
    if output not in OUTPUTS:
        raise ConfigError(f"unknown saliency output {output!r}; choose one of {', '.join(OUTPUTS)}")
    if n_steps < 1:
        raise ConfigError(f"n_steps must be at least 1, got {n_steps}")


def _resolve_target(model: Any, tokenizer: Any, input_ids: torch.Tensor, pos: int, target: int | str | None) -> int:
    """The target token id: given as id or single-token text, else the next prompt token, else the model's top."""
    if target is not None:
        return check_token_ids(model, [single_token_id(tokenizer, target, "target")])[0]
    if pos + 1 < input_ids.shape[1]:
        return int(input_ids[0, pos + 1])
    with torch.no_grad():
        return int(model(input_ids=input_ids[:, : pos + 1], use_cache=False).logits[0, -1].argmax())


def _attribute(
    model: Any,
    input_ids: torch.Tensor,
    forward: Any,
    method: str,
    n_steps: int,
    baseline_token_id: int | None,
    internal_batch_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """Run Captum on the input embeddings: (embeddings, attributions (1, T, d), IG convergence delta or None)."""
    from captum.attr import InputXGradient, IntegratedGradients

    embed = model.get_input_embeddings()
    with torch.no_grad():
        embeds = embed(input_ids)
        if baseline_token_id is None:
            baseline = torch.zeros_like(embeds)
        else:
            baseline = embed(torch.full_like(input_ids, check_token_ids(model, [baseline_token_id])[0]))
    embeds = embeds.detach().requires_grad_()  # the input Captum differentiates with respect to
    with torch.enable_grad():
        if method == "grad_x_input":
            return embeds, InputXGradient(forward).attribute(embeds), None
        attr, deltas = IntegratedGradients(forward).attribute(
            embeds,
            baselines=baseline,
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
    return embeds, attr, float(deltas.sum())


def input_saliency(
    model: Any,
    tokenizer: Any,
    prompt: str | Sequence[int],
    *,
    target: int | str | None = None,
    position: int = -1,
    method: Method = "integrated_gradients",
    output: Output = "prob",
    n_steps: int = 50,
    baseline_token_id: int | None = None,
    internal_batch_size: int | None = None,
) -> Saliency:
    """Attribute the target token's output at a position to the prompt's input embeddings, with Captum.

    Args:
        model: A supported transformers causal LM.
        tokenizer: Its tokenizer (None when the prompt and target are token ids).
        prompt: Text or token ids.
        target: The output token (id or single-token text); default: the prompt's next token at `position`, or the
            model's most likely token when `position` is the last one.
        position: The position whose prediction is explained (negative counts from the end).
        method: `grad_x_input` or `integrated_gradients`.
        output: Attribute the target's `prob`, `logprob` or `logit`.
        n_steps: Integrated gradients steps (Gauss-Legendre, Captum's default method).
        baseline_token_id: Integrated gradients baseline token; None for all-zero embeddings.
        internal_batch_size: Integrated gradients batch size (None: all steps in one batch).

    Raises:
        ModelError: unsupported model family.
        ConfigError: bad prompt, position, target, method, output, steps or baseline token.
    """
    _check_options(method, output, n_steps)
    p = encode(model, tokenizer, prompt)
    pos = check_position(p.n_tokens, position)
    target_id = _resolve_target(model, tokenizer, p.input_ids, pos, target)
    forward = target_function(model, pos, target_id, output)
    embeds, attr, delta = _attribute(
        model, p.input_ids, forward, method, n_steps, baseline_token_id, internal_batch_size
    )
    with torch.no_grad():
        value = float(forward(embeds)[0])
    attributions = attr[0].detach().float().cpu().numpy()
    signed, l2, l2_share = token_scores(attributions)
    ig = method == "integrated_gradients"
    return Saliency(
        tokens=p.tokens,
        position=pos,
        target_id=target_id,
        target_token=token_texts(tokenizer, [target_id])[0],
        method=method,
        output=output,
        target_value=value,
        attributions=attributions,
        signed=signed,
        l2=l2,
        l2_share=l2_share,
        baseline_token_id=baseline_token_id if ig else None,
        n_steps=n_steps if ig else None,
        convergence_delta=delta,
    )
