"""In-process transformers back end: chat generation and exact prompt logprobs from one forward pass.

Prompt logprobs reuse the key/value cache of the longest prompt prefix seen recently: all-at-once
simulation sends one long shared few-shot prefix followed by a different excerpt each time, so only the
excerpt is recomputed. The cached prefix is read through views (llm/hf_batch.py), never copied. Batched
slot scoring and batched generation serve many prompts per forward. Model calls run in a worker thread
(one at a time) so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from neuron_explainer.llm.base import (
    Capability,
    GenerateParams,
    Message,
    SlotError,
    SlotLogprobs,
    SlotRequest,
    TokenLogprobs,
)
from neuron_explainer.llm.hf_batch import (
    PrefixStore,
    SlotScorer,
    cache_view,
    can_view,
    common_prefix,
    pack,
    recording_cache,
)

logger = logging.getLogger(__name__)


@dataclass
class _PrefixEntry:
    ids: tuple[int, ...]
    include: tuple[int, ...]
    cache: Any  # sliding-window layers keep their full past, so any prefix of it can be viewed
    top_values: torch.Tensor  # (len(ids), k): log-probs of the top next tokens at each position
    top_indices: torch.Tensor


class LocalBackend:
    """A transformers causal LM in this process (CPU or CUDA)."""

    name = "local"
    capabilities = frozenset(
        {Capability.GENERATE, Capability.PROMPT_LOGPROBS, Capability.SLOT_LOGPROBS, Capability.GENERATE_BATCH}
    )
    supports_prefill = True
    """A trailing assistant message is continued, not answered."""

    def __init__(
        self,
        module: Any,
        tokenizer: Any,
        *,
        model_name: str,
        reuse_prefix: bool = True,
        min_prefix_tokens: int = 16,
        cache_entries: int = 2,
        slot_batch_tokens: int = 2048,
        generate_batch_tokens: int = 16384,
    ) -> None:
        self.module = module
        """The torch model."""
        self.tokenizer = tokenizer
        self.model = model_name
        """The model's spec (hub id, path or builtin name), as the protocol's identifier."""
        self.reuse_prefix = reuse_prefix
        self.min_prefix_tokens = min_prefix_tokens
        self.cache_entries = cache_entries
        self._cache: list[_PrefixEntry] = []
        self._lock = threading.Lock()
        self._token_text: dict[int, str] = {}
        self.slots = SlotScorer(
            module,
            tokenizer,
            PrefixStore(cache_entries, min_prefix_tokens),
            batch_tokens=slot_batch_tokens,
            reuse_prefix=reuse_prefix,
        )
        """Batched slot scoring (`label_logprobs`); its counters say how many tokens it ran."""
        self.generate_batch_tokens = generate_batch_tokens
        """Most padded tokens (rows x (longest prompt + max_tokens)) generated together by `generate_batch`."""
        self.forward_tokens = 0
        """Tokens run through the model by prompt_logprobs (prefix reuse lowers it)."""
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        """Prompt tokens sent (generation and prompt logprobs) and tokens generated."""

    @classmethod
    def load(cls, spec: str, *, device: str = "cpu", dtype: str = "float32", **kwargs: Any) -> LocalBackend:
        """Load a model by spec (hub id, directory, GGUF file or builtin:<name>)."""
        from neuron_explainer.activations.models import load_causal_lm

        model, tokenizer, _ = load_causal_lm(spec, dtype=dtype, device=device)
        return cls(model, tokenizer, model_name=spec, **kwargs)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live."""
        return next(self.module.parameters()).device

    # -- generate ---------------------------------------------------------------------------------
    def _chat_ids(self, messages: Sequence[Message]) -> torch.Tensor:
        tok = self.tokenizer
        chat = [{"role": m.role, "content": m.content} for m in messages]
        prefill = bool(messages) and messages[-1].role == "assistant"
        if getattr(tok, "chat_template", None):
            # a trailing assistant message is a prefill: the model continues it
            ids = tok.apply_chat_template(
                chat,
                add_generation_prompt=not prefill,
                continue_final_message=prefill,
                return_tensors="pt",
                return_dict=True,
            )
            return ids["input_ids"]
        if prefill:
            text = "".join(f"{m.role.capitalize()}: {m.content}\n\n" for m in messages[:-1])
            return tok(text + f"Assistant: {messages[-1].content}", return_tensors="pt").input_ids
        text = "".join(f"{m.role.capitalize()}: {m.content}\n\n" for m in messages) + "Assistant:"
        return tok(text, return_tensors="pt").input_ids

    def _eos_ids(self) -> set[int]:
        eos = getattr(getattr(self.module, "generation_config", None), "eos_token_id", None)
        eos = self.tokenizer.eos_token_id if eos is None else eos
        return set() if eos is None else {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}

    def _generate_rows(self, prompts: Sequence[list[int]], params: GenerateParams) -> list[list[int]]:
        """New token ids for each prompt, left-padded into one `generate` call, each cut at its first EOS."""
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        pad = 0 if pad is None else int(pad)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        kwargs: dict[str, Any] = {"do_sample": params.temperature > 0, "max_new_tokens": params.max_tokens}
        if params.temperature > 0:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
        with torch.no_grad():
            out = self.module.generate(
                ids.to(self.device), attention_mask=mask.to(self.device), pad_token_id=pad, **kwargs
            )
        eos = self._eos_ids()
        rows = []
        for new in out[:, width:].tolist():
            cut = next((i for i, t in enumerate(new) if t in eos), len(new))
            rows.append(new[:cut])
        self.usage["prompt_tokens"] += sum(len(p) for p in prompts)
        self.usage["completion_tokens"] += sum(len(r) for r in rows)
        return rows

    def _generate_batch(self, requests: Sequence[tuple[Sequence[Message], GenerateParams]]) -> list[list[str]]:
        # One row per sample; greedy samples are all the same, so one row serves them all.
        rows = [
            (i, self._chat_ids(messages)[0].tolist(), params)
            for i, (messages, params) in enumerate(requests)
            for _ in range(params.n if params.temperature > 0 else 1)
        ]
        groups: dict[tuple, list[tuple[int, list[int], GenerateParams]]] = {}
        for row in rows:  # rows generate together only with the same sampling settings
            p = row[2]
            groups.setdefault((p.max_tokens, p.temperature, p.top_p, p.seed), []).append(row)
        texts: list[list[str]] = [[] for _ in requests]
        for group in groups.values():
            params = group[0][2]
            new_rows: dict[int, list[int]] = {}
            with self._lock:  # held across batches: nothing else may draw from the seeded generator
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                for batch in pack([len(r[1]) + params.max_tokens for r in group], self.generate_batch_tokens):
                    chosen = sorted(batch)  # keeps the samples of a request in order
                    new = self._generate_rows([group[j][1] for j in chosen], params)
                    new_rows.update(zip(chosen, new, strict=True))
            for j, tokens in sorted(new_rows.items()):
                i, _, p = group[j]
                text = _cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), p.stop)
                texts[i].extend([text] * (1 if p.temperature > 0 else p.n))
        return texts

    async def generate(self, messages: Sequence[Message], params: GenerateParams) -> list[str]:
        """Sample `params.n` chat completions (greedy when temperature is 0)."""
        (texts,) = await asyncio.to_thread(self._generate_batch, [(messages, params)])
        return texts

    async def generate_batch(self, requests: Sequence[tuple[Sequence[Message], GenerateParams]]) -> list[list[str]]:
        """`generate` for many chats at once: left-padded rows, batched by `generate_batch_tokens`.

        At temperature 0 each result equals `generate`'s. Sampled rows (temperature > 0) share a batch
        only with rows of the same settings; a seed is applied once per such group, so sampled texts are
        reproducible for the same list of requests, not equal to one-by-one `generate` calls.
        """
        return await asyncio.to_thread(self._generate_batch, requests)

    # -- prompt logprobs --------------------------------------------------------------------------
    def _text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.tokenizer.decode([token_id])
        return text

    def _forward_top(
        self, ids: list[int], top_k: int, include: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (then the `include` ids') next-token log-probs at every position, reusing a cached prefix."""
        start, cache, cached_v, cached_i = 0, None, None, None
        if self.reuse_prefix:
            best = None
            for entry in self._cache:
                n = common_prefix(entry.ids, ids)
                usable = entry.include == include and entry.top_values.shape[1] == top_k + len(include)
                if usable and n >= self.min_prefix_tokens and (best is None or n > best[0]):
                    best = (n, entry)
            if best is not None:
                start = min(best[0], len(ids) - 1)  # always recompute at least the last token
                cache = cache_view(best[1].cache, start)
                cached_v, cached_i = best[1].top_values[:start], best[1].top_indices[:start]
            else:
                cache = recording_cache(self.module)
        x = torch.tensor([ids[start:]], device=self.device)
        positions = torch.arange(start, len(ids), device=self.device)[None]
        with torch.no_grad():
            out = self.module(input_ids=x, position_ids=positions, cache=cache, use_cache=self.reuse_prefix)
        self.forward_tokens += x.shape[1]
        logp = torch.log_softmax(out.logits[0].float(), dim=-1)
        values, indices = logp.topk(top_k, dim=-1)
        if include:
            inc = torch.tensor(include, device=logp.device)
            values = torch.cat([values, logp[:, inc]], 1)
            indices = torch.cat([indices, inc.expand(len(logp), -1)], 1)
        values, indices = values.cpu(), indices.cpu()
        if cached_v is not None and cached_i is not None:
            values, indices = torch.cat([cached_v, values]), torch.cat([cached_i, indices])
        if self.reuse_prefix and not can_view(out.cache):
            logger.info("prefix reuse disabled for %s: its KV cache has layers that cannot be viewed", self.model)
            self.reuse_prefix = False
        if self.reuse_prefix:
            self._cache.insert(0, _PrefixEntry(tuple(ids), include, out.cache, values, indices))
            del self._cache[self.cache_entries :]
        return values, indices

    def _single_token_ids(self, texts: Sequence[str]) -> tuple[int, ...]:
        out = []
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) == 1 and ids[0] != self.tokenizer.unk_token_id:
                out.append(ids[0])
        return tuple(out)

    def _prompt_logprobs(self, prompt: str, top_k: int, include: Sequence[str] = ()) -> list[TokenLogprobs]:
        enc = self.tokenizer(prompt, return_offsets_mapping=True, return_special_tokens_mask=True)
        ids, offsets, special = enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"]
        self.usage["prompt_tokens"] += len(ids)
        with self._lock:
            values, indices = self._forward_top(ids, top_k, self._single_token_ids(include))
        result = []
        for pos, ((s, e), is_special) in enumerate(zip(offsets, special, strict=True)):
            if is_special:
                continue
            seen: set[int] = set()
            top = []
            for v, i in zip(values[pos].tolist(), indices[pos].tolist(), strict=True):
                if i not in seen:  # an included id may also be among the top-k
                    seen.add(i)
                    top.append((self._text(i), v))
            result.append(TokenLogprobs(prompt[s:e], s, tuple(top)))
        return result

    async def prompt_logprobs(self, prompt: str, top_k: int, include: Sequence[str] = ()) -> list[TokenLogprobs]:
        """Exact top-k next-token log-probs at every prompt token (special tokens such as BOS omitted).

        Each single-token string in `include` is reported at every position too, top-k or not.
        """
        return await asyncio.to_thread(self._prompt_logprobs, prompt, top_k, include)

    def _label_logprobs(self, requests: Sequence[SlotRequest], label_mass: bool) -> list[SlotLogprobs | SlotError]:
        with self._lock:
            before = self.slots.prompt_tokens
            out = self.slots.score(requests, label_mass=label_mass)
            self.usage["prompt_tokens"] += self.slots.prompt_tokens - before
        return out

    async def label_logprobs(
        self, requests: Sequence[SlotRequest], *, label_mass: bool = False
    ) -> list[SlotLogprobs | SlotError]:
        """Per request, the log-probabilities of its labels at each slot, renormalised over the labels.

        Read from the prediction of the token just before each slot, exactly as one full forward would
        give them. The prompts' shared prefix runs once and is reused across calls; suffixes run in
        batches of `slot_batch_tokens`. `label_mass` adds each slot's total label probability over the
        whole vocabulary (a full output head at every slot: slower). A request whose slots do not start
        a token, or whose labels are not single tokens, gets a SlotError in its place; the others are scored.
        """
        return await asyncio.to_thread(self._label_logprobs, requests, label_mass)

    async def aclose(self) -> None:
        """Drop cached prefixes."""
        self._cache.clear()
        self.slots.store.clear()


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return text if cut < 0 else text[:cut]
