"""Batched slot scoring for the in-process transformers back end (torch; no network).

Many prompts that share a long prefix (the simulator's few-shot examples) are scored together: the
prefix's key/value cache is computed once and expanded across the batch as a view, the suffixes are
right-padded into batches sized by a token budget, and output logits are computed only at the positions
just before each slot, only for the labels (the whole vocabulary only when the labels' total mass is
asked for). Right padding keeps every real token's position and causal context exactly as in a single
prompt, so no position or mask arithmetic can shift a result; the attention mask still marks the pads.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from neuron_explainer.llm.base import CapabilityError, SlotError, SlotLogprobs, SlotRequest

logger = logging.getLogger(__name__)


def recording_cache(module: Any) -> Any:
    """An empty KV cache for `module` whose sliding-window layers keep their full past, so views can cut it."""
    from transformers import DynamicCache

    cache = DynamicCache(config=module.config)
    for layer in cache.layers:
        if hasattr(layer, "activate_past_recording"):
            layer.activate_past_recording()
    return cache


def can_view(cache: Any) -> bool:
    """Whether `cache` holds only plain dynamic layers (full or sliding-window) that `cache_view` understands."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = getattr(cache, "layers", None) or []
    return bool(layers) and all(
        type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) and getattr(layer, "is_initialized", False)
        for layer in layers
    )


def cache_view(cache: Any, length: int, batch: int = 1, keep_history: bool = True) -> Any:
    """A cache holding the first `length` positions of `cache`, repeated over `batch` rows, without copying.

    The layers are new objects over sliced and expanded views of the stored tensors, so running the model
    on the view (which concatenates new keys) never changes `cache`. `cache`'s sliding-window layers must
    hold their full past (see `recording_cache`). With `keep_history` the view's sliding layers keep theirs
    too, so the cache a forward returns can itself be viewed at any length later.
    """
    view = copy.copy(cache)
    view.layers = []
    for layer in cache.layers:
        new = copy.copy(layer)
        start = 0
        if getattr(layer, "is_sliding", False):
            new.cumulative_length = length
            new.record_past = keep_history
            if not keep_history:  # only the last window - 1 positions can still be attended to
                start = max(0, length - layer.sliding_window + 1)
        new.keys = layer.keys[:, :, start:length].expand(batch, -1, -1, -1)
        new.values = layer.values[:, :, start:length].expand(batch, -1, -1, -1)
        view.layers.append(new)
    return view


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class Prefix:
    """Token ids and the KV cache that holds exactly them (sliding layers with their full past)."""

    ids: tuple[int, ...]
    """The prefix's token ids."""
    cache: Any
    """Its KV cache (a transformers DynamicCache); read it through `cache_view`, never run the model on it."""


class PrefixStore:
    """The last few prefixes run, reused through views: a new prefix only runs what it does not share."""

    def __init__(self, entries: int = 2, min_tokens: int = 16) -> None:
        self.entries = entries
        """How many prefixes to keep (each holds its KV cache)."""
        self.min_tokens = min_tokens
        """Shorter common prefixes are recomputed rather than reused."""
        self.items: list[Prefix] = []
        """Stored prefixes, most recent first."""
        self.forward_tokens = 0
        """Prefix tokens run through the model (reuse lowers it)."""

    def get(self, module: Any, ids: Sequence[int]) -> Prefix:
        """The KV cache of exactly `ids`, computing only the part no stored prefix shares."""
        ids = tuple(ids)
        best, n = None, 0
        for entry in self.items:
            shared = min(common_prefix(entry.ids, ids), len(ids))
            if shared >= self.min_tokens and shared > n:
                best, n = entry, shared
        if best is not None and n == len(ids):
            return Prefix(ids, cache_view(best.cache, n))
        cache = cache_view(best.cache, n) if best is not None else recording_cache(module)
        x = torch.tensor([ids[n:]], device=_device(module))
        with torch.no_grad():
            out = module.base_model(
                input_ids=x, position_ids=torch.arange(n, len(ids), device=x.device)[None], cache=cache, use_cache=True
            )
        self.forward_tokens += len(ids) - n
        prefix = Prefix(ids, out.cache)
        self.items.insert(0, prefix)
        del self.items[self.entries :]
        return prefix

    def clear(self) -> None:
        """Drop every stored prefix."""
        self.items.clear()


@dataclass
class Encoded:
    """A slot request tokenised and checked."""

    index: int
    """Position of the request in the caller's list."""
    ids: list[int]
    """The whole prompt's token ids, special tokens included."""
    reads: list[int]
    """Per slot, the index of the token whose prediction is read: the one just before the slot's token."""
    slot_tokens: tuple[str, ...]
    """The prompt's text of the token that starts at each slot."""
    label_ids: tuple[int, ...]
    """The single token id of each label, in the request's label order."""


def label_token_ids(tokenizer: Any, labels: Sequence[str]) -> tuple[int, ...]:
    """The single token id of each label.

    Raises:
        SlotError: no labels, or a label is several tokens, unknown to the tokenizer, or a repeat.
    """
    out: list[int] = []
    for label in labels:
        ids = tokenizer(label, add_special_tokens=False)["input_ids"]
        if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
            raise SlotError(f"label {label!r} is {len(ids)} tokens (or unknown) for this tokenizer; labels must be one")
        if ids[0] in out:
            raise SlotError(f"label {label!r} is the same token as another label")
        out.append(ids[0])
    if not out:
        raise SlotError("a slot request needs at least one label")
    return tuple(out)


def encode_request(tokenizer: Any, request: SlotRequest, index: int, label_ids: tuple[int, ...]) -> Encoded:
    """Tokenise a request and find the token that starts at each slot.

    Raises:
        SlotError: no token starts at a slot, or the slot's token is the prompt's first.
    """
    enc = tokenizer(request.prompt, return_offsets_mapping=True, return_special_tokens_mask=True)
    spans, special = enc["offset_mapping"], enc["special_tokens_mask"]
    starts = {span[0]: i for i, span in enumerate(spans) if not special[i]}
    at_slot = [starts.get(slot, 0) for slot in request.slots]  # 0: none, or the first token (nothing reads it)
    if 0 in at_slot:
        n = at_slot.index(0)
        raise SlotError(
            f"no prompt token starts at slot {n} (offset {request.slots[n]}) or it is the first token: the "
            "tokenizer does not split the prompt at the slot"
        )
    texts = tuple(request.prompt[spans[i][0] : spans[i][1]] for i in at_slot)
    return Encoded(index, list(enc["input_ids"]), [i - 1 for i in at_slot], texts, label_ids)


def pack(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Group indices into batches whose padded size (rows x longest) stays within `budget` tokens.

    Longest first, so each batch holds similar lengths and little padding; a row longer than the budget
    gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class SlotHead:
    """The model's output head applied to a few hidden states and, usually, a few vocabulary rows only."""

    def __init__(self, module: Any) -> None:
        self.head = module.get_output_embeddings()
        """The model's output projection (its vocabulary rows are the weight's rows)."""
        config = module.config.get_text_config() if hasattr(module.config, "get_text_config") else module.config
        self.softcap = getattr(config, "final_logit_softcapping", None)
        """Gemma 2/3's final logit softcapping (None: none)."""
        self.checked = False
        """Whether `check` has passed for this model."""

    def logits(self, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 logits of `hidden` (n, d) for vocabulary `rows` (all when None), softcapped as the model does."""
        weight = self.head.weight if rows is None else self.head.weight[rows]
        bias = getattr(self.head, "bias", None)
        if bias is not None and rows is not None:
            bias = bias[rows]
        out = torch.nn.functional.linear(hidden, weight, bias)
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out.float()

    def check(self, module: Any, ids: Sequence[int]) -> None:
        """Once per model: this head on the base model's output must match the model's own logits.

        Raises:
            CapabilityError: the model transforms its logits in a way this head does not reproduce.
        """
        if self.checked:
            return
        x = torch.tensor([list(ids[:8])], device=_device(module))
        with torch.no_grad():
            want = module(input_ids=x).logits[0, -1].float()
            got = self.logits(module.base_model(input_ids=x).last_hidden_state[0, -1:])[0]
        if not torch.allclose(got, want, atol=1e-3 * max(1.0, float(want.abs().max())), rtol=1e-3):
            raise CapabilityError(
                f"batched slot scoring does not support {type(module).__name__}: its output head is not a plain "
                "(softcapped) projection; simulate one prompt at a time instead"
            )
        self.checked = True


@dataclass
class SlotScorer:
    """Scores many slot requests with one model: shared prefix once, suffixes batched by a token budget."""

    module: Any
    """The transformers causal LM."""
    tokenizer: Any
    """Its fast tokenizer (character offsets are needed to find the slots)."""
    store: PrefixStore
    """The shared prefixes run so far."""
    batch_tokens: int = 2048
    """Most padded suffix tokens (rows x longest suffix) run in one forward."""
    reuse_prefix: bool = True
    """Run the prompts' shared prefix once per call (and reuse it across calls); off: every prompt in full."""
    prompt_tokens: int = 0
    """Tokens of every prompt scored (prefix included, as if each ran alone)."""
    suffix_tokens: int = 0
    """Real (unpadded) suffix tokens run; the prefix's are in `store.forward_tokens`."""
    padded_tokens: int = 0
    """Suffix positions run including padding."""
    batches: int = 0
    """Forward passes over suffixes."""
    head: SlotHead = field(init=False)
    """The output head, applied at the slots only."""
    label_cache: dict[tuple[str, ...], tuple[int, ...]] = field(default_factory=dict)
    """Label strings -> their token ids."""

    def __post_init__(self) -> None:
        self.head = SlotHead(self.module)

    def score(self, requests: Sequence[SlotRequest], label_mass: bool = False) -> list[SlotLogprobs | SlotError]:
        """Label log-probabilities at every slot of every request; a request that cannot be scored gets its error."""
        encoded, results = self.encode(requests)
        self.score_encoded(encoded, results, label_mass)
        return [r for r in results if r is not None]

    def score_encoded(
        self, encoded: Sequence[Encoded], results: list[SlotLogprobs | SlotError | None], label_mass: bool = False
    ) -> None:
        """Score tokenised requests into `results[e.index]` (benchmarks build `Encoded` rows from token ids)."""
        if not encoded:
            return
        self.head.check(self.module, encoded[0].ids)
        n, cache = self.shared_prefix(encoded)
        for batch in pack([len(e.ids) - n for e in encoded], self.batch_tokens):
            rows = [encoded[j] for j in batch]
            with torch.no_grad():
                hidden = self.hidden_states(rows, n, cache)
                device = hidden.device
                rows_at = torch.tensor([b for b, r in enumerate(rows) for _ in r.reads], device=device)
                cols_at = torch.tensor([p - n for r in rows for p in r.reads], device=device)
                for row, out in zip(rows, self._read(rows, hidden[rows_at, cols_at], label_mass), strict=True):
                    results[row.index] = out

    def encode(self, requests: Sequence[SlotRequest]) -> tuple[list[Encoded], list[SlotLogprobs | SlotError | None]]:
        """Tokenise and check every request: the valid ones, and a result list holding the others' errors."""
        results: list[SlotLogprobs | SlotError | None] = [None] * len(requests)
        encoded = []
        for i, request in enumerate(requests):
            try:
                if request.labels not in self.label_cache:
                    self.label_cache[request.labels] = label_token_ids(self.tokenizer, request.labels)
                encoded.append(encode_request(self.tokenizer, request, i, self.label_cache[request.labels]))
                self.prompt_tokens += len(encoded[-1].ids)
            except SlotError as e:
                results[i] = e
        return encoded, results

    def shared_prefix(self, encoded: Sequence[Encoded]) -> tuple[int, Any]:
        """Length and cache of the prefix every prompt shares, up to the first token whose prediction is read."""
        if not self.reuse_prefix:
            return 0, None
        first = encoded[0].ids
        n = min(min(common_prefix(first, e.ids), min(e.reads)) for e in encoded)
        if n == 0:
            return 0, None
        prefix = self.store.get(self.module, first[:n])
        if not can_view(prefix.cache):
            logger.info("prefix reuse disabled for %s: its KV cache has layers it cannot view", type(self.module))
            self.reuse_prefix = False
            self.store.clear()
            return 0, None
        return n, prefix.cache

    def hidden_states(self, rows: Sequence[Encoded], n: int, prefix: Any) -> torch.Tensor:
        """The base model's last hidden states over the rows' right-padded suffixes after `n` prefix tokens."""
        suffixes = [r.ids[n:] for r in rows]
        width = max(len(s) for s in suffixes)
        x = torch.full((len(rows), width), _pad_id(self.tokenizer), dtype=torch.long)
        mask = torch.zeros((len(rows), n + width), dtype=torch.long)
        mask[:, :n] = 1
        for b, s in enumerate(suffixes):
            x[b, : len(s)] = torch.tensor(s)
            mask[b, n : n + len(s)] = 1
        positions = torch.arange(n, n + width)[None].expand(len(rows), -1)
        cache = cache_view(prefix, n, len(rows), keep_history=False) if n else None
        device = _device(self.module)
        hidden = self.module.base_model(
            input_ids=x.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            cache=cache,
            use_cache=cache is not None,
        ).last_hidden_state
        self.suffix_tokens += sum(len(s) for s in suffixes)
        self.padded_tokens += x.numel()
        self.batches += 1
        return hidden

    def _read(self, rows: Sequence[Encoded], hidden: torch.Tensor, label_mass: bool) -> list[SlotLogprobs]:
        """Per row: label log-probabilities renormalised over its labels (and their mass) at its reads."""
        vocab = sorted({i for r in rows for i in r.label_ids})
        column = {token: j for j, token in enumerate(vocab)}
        logits = self.head.logits(hidden, torch.tensor(vocab, device=hidden.device))
        if label_mass:  # the whole vocabulary, a few rows at a time (262k floats per row for Gemma)
            total = torch.cat([self.head.logits(h).logsumexp(-1) for h in hidden.split(64)])
        out, start = [], 0
        for r in rows:
            stop = start + len(r.reads)
            chosen = logits[start:stop, [column[t] for t in r.label_ids]]
            norm = chosen.logsumexp(-1, keepdim=True)
            mass = tuple((norm[:, 0] - total[start:stop]).tolist()) if label_mass else None
            out.append(SlotLogprobs(tuple(map(tuple, (chosen - norm).tolist())), r.slot_tokens, mass))
            start = stop
        return out


def _device(module: Any) -> torch.device:
    return next(module.parameters()).device


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0
