"""In-process transformers back end: chat generation and exact prompt logprobs from one forward pass.

Prompt logprobs reuse the key/value cache of the longest prompt prefix seen recently: all-at-once
simulation sends one long shared few-shot prefix followed by a different excerpt each time, so only the
excerpt is recomputed. Model calls run in a worker thread (one at a time) so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from neuron_explainer.llm.base import Capability, GenerateParams, Message, TokenLogprobs

logger = logging.getLogger(__name__)


@dataclass
class _PrefixEntry:
    ids: tuple[int, ...]
    include: tuple[int, ...]
    kv: Any
    top_values: torch.Tensor  # (len(ids), k): log-probs of the top next tokens at each position
    top_indices: torch.Tensor


class LocalBackend:
    """A transformers causal LM in this process (CPU or CUDA)."""

    name = "local"
    capabilities = frozenset({Capability.GENERATE, Capability.PROMPT_LOGPROBS})
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
        self.reuse_failures = 0
        """Prompts whose cached-prefix continuation failed and were recomputed in full."""
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

    def _generate(self, messages: Sequence[Message], params: GenerateParams) -> list[str]:
        ids = self._chat_ids(messages).to(self.device)
        tok = self.tokenizer
        sample = params.temperature > 0
        kwargs: dict[str, Any] = {
            "do_sample": sample,
            "max_new_tokens": params.max_tokens,
            "num_return_sequences": params.n,
            "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        }
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
        with self._lock:
            if params.seed is not None:
                torch.manual_seed(params.seed)
            with torch.no_grad():
                out = self.module.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        texts = [tok.decode(row[ids.shape[1] :], skip_special_tokens=True) for row in out]
        self.usage["prompt_tokens"] += int(ids.shape[1])
        pad = kwargs["pad_token_id"]
        new_tokens = [row[ids.shape[1] :] for row in out]
        self.usage["completion_tokens"] += sum(len(r) if pad is None else int((r != pad).sum()) for r in new_tokens)
        return [_cut_at_stop(t, params.stop) for t in texts]

    async def generate(self, messages: Sequence[Message], params: GenerateParams) -> list[str]:
        """Sample `params.n` chat completions (greedy when temperature is 0)."""
        return await asyncio.to_thread(self._generate, messages, params)

    # -- prompt logprobs --------------------------------------------------------------------------
    def _text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.tokenizer.decode([token_id])
        return text

    def _forward_top(
        self, ids: list[int], top_k: int, include: tuple[int, ...] = (), allow_reuse: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (then the `include` ids') next-token log-probs at every position, reusing a cached prefix."""
        start, kv, cached_v, cached_i = 0, None, None, None
        if self.reuse_prefix and allow_reuse:
            best = None
            for entry in self._cache:
                n = _common_prefix(entry.ids, ids)
                usable = entry.include == include and entry.top_values.shape[1] == top_k + len(include)
                if usable and n >= self.min_prefix_tokens and (best is None or n > best[0]):
                    best = (n, entry)
            if best is not None:
                n, entry = best
                n = min(n, len(ids) - 1)  # always recompute at least the last token
                try:
                    kv = copy.deepcopy(entry.kv)
                    excess = kv.get_seq_length() - n
                    if excess > 0:
                        kv.crop(-excess)  # negative: drop that many trailing positions
                    start = n
                    cached_v, cached_i = entry.top_values[:n], entry.top_indices[:n]
                except (AttributeError, NotImplementedError, ValueError, RuntimeError) as e:
                    logger.info("prefix reuse disabled for %s: %s", self.model, e)
                    self.reuse_prefix, kv, start = False, None, 0
        if self.reuse_prefix and kv is None:
            kv = _recording_cache(self.module)
        x = torch.tensor([ids[start:]], device=self.device)
        try:
            with torch.no_grad():
                out = self.module(input_ids=x, past_key_values=kv, use_cache=self.reuse_prefix)
        except RuntimeError as e:
            if start == 0:
                raise
            # Some cache layouts (sliding-window layers after a crop) reject some continuations:
            # recompute this prompt from scratch rather than fail.
            logger.debug("prefix reuse failed for %s, recomputing in full: %s", self.model, e)
            self.reuse_failures += 1
            return self._forward_top(ids, top_k, include, allow_reuse=False)
        self.forward_tokens += x.shape[1]
        logp = torch.log_softmax(out.logits[0].float(), dim=-1)
        values, indices = logp.topk(top_k, dim=-1)
        if include:
            inc = torch.tensor(include, device=logp.device)
            values = torch.cat([values, logp[:, inc]], 1)
            indices = torch.cat([indices, inc.expand(len(logp), -1)], 1)
        values, indices = values.cpu(), indices.cpu()
        if cached_v is not None:
            values, indices = torch.cat([cached_v, values]), torch.cat([cached_i, indices])
        if self.reuse_prefix:
            self._cache.insert(0, _PrefixEntry(tuple(ids), include, out.past_key_values, values, indices))
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

    async def aclose(self) -> None:
        """Drop cached prefixes."""
        self._cache.clear()


def _recording_cache(module: Any) -> Any:
    """A fresh KV cache that keeps every past state, so sliding-window layers (Gemma 2/3) can be cropped."""
    from transformers import DynamicCache

    cache = DynamicCache(config=module.config)
    if hasattr(cache, "activate_past_recording"):
        cache.activate_past_recording()
    return cache


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return text if cut < 0 else text[:cut]
