"""Bad input gets a clear message, a non-zero exit, and no output a later run could mistake for complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neuron_explainer.cli import app
from tests.conftest import make_tokenizer

runner = CliRunner()


def harvest(model: Path | str, corpus: Path | str, out: Path, *extra: str):
    args = [
        "harvest",
        "--model",
        str(model),
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--n-excerpts",
        "20",
        "--excerpt-len",
        "16",
        "--batch-size",
        "8",
        *extra,
    ]
    return runner.invoke(app, args)


def assert_failed(result, *phrases: str) -> None:
    assert result.exit_code != 0, result.output
    text = " ".join(result.output.split())
    for phrase in phrases:
        assert phrase in text, text


def assert_nothing_complete(out: Path) -> None:
    manifest = out / "manifest.json"
    assert not manifest.exists() or json.loads(manifest.read_text())["status"]["harvest"] != "complete"


@pytest.fixture(scope="module")
def opt_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import transformers as tf

    tokenizer, vocab = make_tokenizer(with_bos=False)
    cfg = tf.OPTConfig(
        hidden_size=16,
        ffn_dim=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=vocab,
        max_position_embeddings=64,
        word_embed_proj_dim=16,
    )
    d = tmp_path_factory.mktemp("opt") / "tiny-opt"
    tf.OPTForCausalLM(cfg).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def test_unknown_model_type_names_supported_ones(opt_model: Path, corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert_failed(harvest(opt_model, corpus_file, out), "unsupported model type 'opt'", "gpt2", "llama", "gpt_neox")
    assert not out.exists()


def test_missing_model_path(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert_failed(harvest(tmp_path / "nope.gguf", corpus_file, out), "GGUF file not found")
    assert_failed(harvest("./no/such/dir", corpus_file, out), "model path not found")
    assert not out.exists()


def test_layer_out_of_range(tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert_failed(
        harvest(tiny_model_dirs["gpt2"], corpus_file, out, "--layers", "0,5"),
        "layer(s) [5] out of range",
        "layers 0..1",
    )
    assert_failed(harvest(tiny_model_dirs["gpt2"], corpus_file, out, "--layers", "x"), "--layers must look like")
    assert not out.exists()


def test_empty_corpus(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "run"
    assert_failed(harvest(tiny_model_dirs["gpt2"], empty, out), "corpus", "no documents")
    assert not out.exists()


def test_documents_all_shorter_than_excerpt(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps({"text": "the cat sat on the red road"}) + "\n" for _ in range(5)))
    out = tmp_path / "run"
    assert_failed(harvest(tiny_model_dirs["gpt2"], short, out), "none of the 5 documents", "16 tokens")
    assert not out.exists()


def test_unreadable_corpus_file(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"this is not parquet at all" * 10)
    out = tmp_path / "run"
    assert_failed(harvest(tiny_model_dirs["gpt2"], bad, out), "cannot read corpus")
    assert_failed(harvest(tiny_model_dirs["gpt2"], tmp_path / "missing.jsonl", out), "no corpus files found")
    assert not out.exists()


def test_wrong_text_column(tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert_failed(
        harvest(tiny_model_dirs["gpt2"], corpus_file, out, "--text-column", "body"), "no column 'body'", "text_column"
    )
    assert not out.exists()


def test_output_dir_from_another_config_is_refused_unless_forced(
    tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    assert harvest(tiny_model_dirs["gpt2"], corpus_file, out).exit_code == 0
    before = (out / "records" / "layer-000.parquet").read_bytes()
    assert_failed(
        harvest(tiny_model_dirs["gpt2"], corpus_file, out, "--seed", "4"), "different config", "seed: 0 -> 4", "--force"
    )
    assert (out / "records" / "layer-000.parquet").read_bytes() == before  # nothing lost
    # same config again: nothing to do; another batch size is not a different config
    again = harvest(tiny_model_dirs["gpt2"], corpus_file, out, "--batch-size", "3")
    assert again.exit_code == 0 and "already complete" in again.output
    forced = harvest(tiny_model_dirs["gpt2"], corpus_file, out, "--seed", "4", "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "manifest.json").read_text())["harvest"]["seed"] == 4


def test_incomplete_run_is_not_loadable(tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path: Path) -> None:
    from neuron_explainer import load_neuron_record
    from neuron_explainer.errors import RunDirError

    out = tmp_path / "run"
    assert harvest(tiny_model_dirs["gpt2"], corpus_file, out).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["status"]["harvest"] = "in_progress"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunDirError, match="not complete"):
        load_neuron_record(out, 0, 0)


def test_corrupt_records_file_and_bad_neuron(
    tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path: Path
) -> None:
    from neuron_explainer import load_neuron_record
    from neuron_explainer.errors import RunDirError

    out = tmp_path / "run"
    assert harvest(tiny_model_dirs["gpt2"], corpus_file, out).exit_code == 0
    with pytest.raises(RunDirError, match="out of range"):
        load_neuron_record(out, 0, 10_000)
    with pytest.raises(RunDirError, match="not harvested"):
        load_neuron_record(out, 7, 0)
    (out / "records" / "layer-000.parquet").write_bytes(b"garbage")
    with pytest.raises(RunDirError, match="corrupt"):
        load_neuron_record(out, 0, 0)
    result = runner.invoke(app, ["show", "--run", str(out), "--neuron", "0:1"])
    assert_failed(result, "corrupt")


def test_nan_activations_stop_the_harvest(tmp_path: Path, corpus_file: Path) -> None:
    import torch

    from tests.conftest import make_tiny_model

    tokenizer, vocab = make_tokenizer(with_bos=False)
    model = make_tiny_model("gpt2", vocab)
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[0, 5] = float("nan")
    d = tmp_path / "nan-model"
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    out = tmp_path / "run"
    assert_failed(harvest(d, corpus_file, out), "non-finite (NaN or inf) activations in layer 1")
    assert_nothing_complete(out)
    assert not (out / "records").exists()


def test_unknown_hub_model_offline(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert_failed(
        harvest("no-such-org/no-such-model", corpus_file, out), "cannot load model 'no-such-org/no-such-model'"
    )
    assert not out.exists()


def test_cuda_requested_without_gpu(tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_failed(
        harvest(tiny_model_dirs["gpt2"], corpus_file, tmp_path / "run", "--device", "cuda"), "torch sees no CUDA GPU"
    )
