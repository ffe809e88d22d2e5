"""Token-id -> token-string decoding for stored excerpts. Pure apart from the tokenizer it is given."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def decode_tokens(tokenizer: Any, token_ids: Sequence[int]) -> list[str]:
    """Decode an excerpt into one string per token whose concatenation is the excerpt's text.

    Each token's string is the growth of the decoded prefix, so SentencePiece's leading-space marker
    and multi-byte characters split over byte-fallback pieces land on the right token (a piece that
    completes a character carries it, the earlier pieces are empty) instead of decoding alone to
    U+FFFD or losing their space.
    """
    ids = list(token_ids)
    prefixes = tokenizer.batch_decode([ids[: i + 1] for i in range(len(ids))], clean_up_tokenization_spaces=False)
    # A prefix that ends inside a multi-byte character decodes with a trailing U+FFFD; that character
    # belongs to the token that completes it, so drop the pending U+FFFD (except at the very end).
    clean = [p.rstrip("\ufffd") for p in prefixes[:-1]] + prefixes[-1:]
    out: list[str] = []
    prev = ""
    for text in clean:
        common = len(prev) if text.startswith(prev) else _common_prefix_len(prev, text)
        out.append(text[common:])
        prev = text
    return out


def _common_prefix_len(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
