"""Read puzzles in the JSON layout of OpenAI's published `puzzles.json`.

The file maps a puzzle name to `{name, explanation, false_explanations, sentences}`; a sentence is a
list whose items are a token string (activation 0) or a `[token, activation]` pair. Tokens are kept
exactly as given. Unlike our YAML puzzles, such a puzzle may fire in every sentence (at graded levels):
that is valid for the scorer benchmark. For the explainer benchmark the sentences are split so that
both halves fire: firing sentences are dealt alternately to evidence and held-out (evidence first),
then the silent ones likewise, each group in file order.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from neuron_explainer.datatypes import ActivationRecord
from neuron_explainer.errors import ConfigError
from neuron_explainer.puzzles.puzzle import Puzzle, top_tokens_explanation


def parse_sentence(items: Any, where: str) -> ActivationRecord:
    """One sentence: a list of tokens or [token, activation] pairs.

    Raises:
        ConfigError: an item that is neither, or an activation that is not a finite number >= 0.
    """
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}: a sentence must be a non-empty list of tokens")
    tokens, acts = [], []
    for item in items:
        if isinstance(item, str):
            token, act = item, 0.0
        elif isinstance(item, list) and len(item) == 2 and isinstance(item[0], str):
            token, act = item[0], item[1]
        else:
            raise ConfigError(f"{where}: {item!r} is neither a token nor a [token, activation] pair")
        if isinstance(act, bool) or not isinstance(act, int | float) or not math.isfinite(act) or act < 0:
            raise ConfigError(f"{where}: activation {act!r} of token {token!r} is not a finite number >= 0")
        tokens.append(token)
        acts.append(float(act))
    return ActivationRecord(tokens=tokens, activations=acts)


def evidence_split(records: list[ActivationRecord]) -> tuple[int, ...]:
    """Indices of the evidence sentences: firing ones dealt alternately (evidence first), then silent ones."""
    firing = [i for i, r in enumerate(records) if max(r.activations) > 0]
    silent = [i for i, r in enumerate(records) if max(r.activations) <= 0]
    return tuple(sorted(firing[0::2] + silent[0::2]))


def _puzzle(name: str, item: Any, path: Path) -> Puzzle:
    where = f"{path}: puzzle {name!r}"
    if not isinstance(item, dict):
        raise ConfigError(f"{where} is not a mapping")
    missing = {"explanation", "false_explanations", "sentences"} - set(item)
    if missing:
        raise ConfigError(f"{where} lacks {sorted(missing)}")
    false = item["false_explanations"]
    if not isinstance(false, list) or not false or not all(isinstance(f, str) for f in false):
        raise ConfigError(f"{where}: false_explanations must be a non-empty list of strings")
    if not isinstance(item["sentences"], list):
        raise ConfigError(f"{where}: sentences must be a list")
    records = [parse_sentence(s, f"{where}, sentence {i}") for i, s in enumerate(item["sentences"])]
    if sum(max(r.activations) > 0 for r in records) < 2:
        raise ConfigError(f"{where} needs at least 2 sentences where it fires (one for evidence, one held out)")
    generated = top_tokens_explanation(records)
    extra = () if generated in false else (generated,)
    return Puzzle(
        str(item.get("name", name)), "openai", str(item["explanation"]), (*map(str, false), *extra),
        tuple(records), evidence_idx=evidence_split(records),
    )  # fmt: skip


def load_openai_puzzles(path: str | Path) -> list[Puzzle]:
    """Every puzzle of an OpenAI-layout JSON file, validated.

    Raises:
        ConfigError: unreadable JSON, a missing field, a malformed sentence, or a puzzle firing in
            fewer than two sentences.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is not a readable JSON puzzle file: {e}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path} must map puzzle names to puzzles (OpenAI's puzzles.json layout)")
    return [_puzzle(str(name), item, path) for name, item in data.items()]
