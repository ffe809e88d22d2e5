"""Shared fixtures: tiny random models with an in-code tokenizer, corpora, offline guard, opt-in flags."""

from __future__ import annotations

import json
import os
import random
import socket
from pathlib import Path

import pytest

# Set before anything imports huggingface_hub, which reads these once at import time.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"

WORDS = (
    "the a cat dog sat ran on under over red blue green small big house tree river stone road bird fish "
    "quickly slowly and or but not never always one two three four five six seven eight nine ten city "
    "town field lamp door window chair table book page word line light dark cold warm rain snow sun moon "
    "star sky sea ship boat car train plane apple bread milk water fire wind earth king queen man woman "
    "child friend enemy teacher doctor farmer singer painter writer reader walks talks sings reads writes "
    "paints eats drinks sleeps wakes opens closes finds loses gives takes makes breaks ."
).split()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run tests that need the real offline models")
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/*.txt from the code")
    parser.addoption(
        "--update-regression", action="store_true", help="rewrite tests/data/regression/ (only on purpose)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="needs --run-slow (real offline models, minutes on CPU)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def offline_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach a non-loopback address fails loudly instead of downloading."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else address
        if (
            isinstance(host, str)
            and not (host.startswith("127.") or host in ("localhost", "::1"))
            and self.family in (socket.AF_INET, socket.AF_INET6)
        ):
            raise RuntimeError(f"test tried to reach the network: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def make_tokenizer(with_bos: bool, extra_words: tuple[str, ...] = ()):
    """A WordLevel tokenizer over WORDS (+ `extra_words`), with a [BOS] token prepended if `with_bos`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[BOS]": 1}
    for w in (*WORDS, *extra_words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    if with_bos:
        tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 1)])
    kwargs = {"bos_token": "[BOS]"} if with_bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", **kwargs), len(vocab)


def make_tiny_model(family: str, vocab_size: int):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if family == "gpt2":
        cfg = tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=vocab_size)
        model = tf.GPT2LMHeadModel(cfg)
    elif family == "llama":
        model = tf.LlamaForCausalLM(tiny_llama_config(vocab_size))
    elif family == "gpt_neox":
        cfg = tf.GPTNeoXConfig(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=vocab_size,
            max_position_embeddings=64,
        )
        model = tf.GPTNeoXForCausalLM(cfg)
    else:
        raise ValueError(family)
    return scaled(model)


def tiny_llama_config(vocab_size: int, positions: int = 64):
    """The tiny Llama of the tests: 2 layers, width 32, 48 MLP neurons."""
    import transformers as tf

    return tf.LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=positions,
        bos_token_id=1,
        eos_token_id=0,
        pad_token_id=0,
    )


def scaled(model):
    """The model with its matrices 8x the default init (activations with a usable spread), in eval mode."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return model.eval()


def save_tiny(tmp: Path, family: str) -> Path:
    tokenizer, vocab_size = make_tokenizer(with_bos=family == "llama")
    model = make_tiny_model(family, vocab_size)
    d = tmp / f"tiny-{family}"
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {family: save_tiny(root, family) for family in ("gpt2", "llama", "gpt_neox")}


def write_corpus(d: Path, n_docs: int = 40, seed: int = 0, fmt: str = "jsonl") -> Path:
    """Documents of random words, lengths 5..120 words (some shorter than an excerpt)."""
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS[:-1]) for _ in range(rng.randint(5, 120))) for _ in range(n_docs)]
    d.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path = d / "corpus.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
        return path
    for i, t in enumerate(docs):
        (d / f"doc{i:03d}.txt").write_text(t)
    return d


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def golden(request: pytest.FixtureRequest):
    """Compare a rendered prompt with tests/golden/<name>.txt (rewrite it with --update-golden)."""

    def check(name: str, text: str) -> None:
        path = GOLDEN / f"{name}.txt"
        if request.config.getoption("--update-golden"):
            path.write_text(text, encoding="utf-8")
        assert path.exists(), f"{path} missing: run pytest --update-golden and review the file"
        assert text == path.read_text(encoding="utf-8"), f"prompt differs from {path}"

    return check


def read_target_slot(prompt: str, tokens: list[tuple[str, int]], i: int) -> tuple[str, str, int] | None:
    """For fake-simulator oracles: if token i + 1 is an `unknown` slot of the all-at-once prompt's target
    excerpt, return (explanation, the excerpt's text, slot index); else None."""
    target = prompt.rfind("<start>\n")
    slots = [j for j, (tok, off) in enumerate(tokens) if tok == "unknown" and off > target]
    if i + 1 not in slots:
        return None
    explanation = prompt[:target].rsplit("Explanation: ", 1)[1].split("\n", 1)[0]
    rows = prompt[target + len("<start>\n") :].split("\n")
    text = "".join(row.rsplit("\t", 1)[0] for row in rows if "\t" in row)
    return explanation, text, slots.index(i + 1)


def stage_config(run_dir: Path, **sections):
    """A RunConfig for stage tests: the run directory, no LLM cache, and the given sections/fields."""
    from neuron_explainer.config import load_config

    overrides = {"out": str(run_dir), "llm.cache": False}
    for key, value in sections.items():
        if isinstance(value, dict):
            overrides.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            overrides[key] = value
    return load_config(None, overrides)


def run_stage(name: str, cfg, backends: dict | None = None):
    """Run one stage as a library user would; returns its StageReport."""
    import asyncio

    from neuron_explainer.records.store import RunStore
    from neuron_explainer.stages import STAGES, Deps, stage_module

    deps = Deps.from_config(cfg, backends=backends)
    return asyncio.run(stage_module(name).run(RunStore(cfg.out), getattr(cfg, STAGES[name]), deps))


def neuron_spec(neurons) -> str:
    """`[(0, 1), (1, 5)]` as the selection spec `0:1,1:5`."""
    return ",".join(f"{layer}:{n}" for layer, n in neurons)
