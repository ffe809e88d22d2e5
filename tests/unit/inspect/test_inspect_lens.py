import numpy as np
import pytest
import torch
from tiny_families import PROMPT

from neuron_explainer.errors import ConfigError
from neuron_explainer.inspect.family import encode, final_norm, logits_from_residual
from neuron_explainer.inspect.lens import block_residuals, logit_lens, rankings, read_rows


def brute_rank(logits: np.ndarray, token: int) -> int:
    order = sorted(range(len(logits)), key=lambda i: -logits[i])
    return 1 + sum(1 for i in order if logits[i] > logits[token])


def test_last_layer_is_the_models_logits(family_lm) -> None:
    family, model, tokenizer = family_lm
    p = encode(model, tokenizer, PROMPT)
    with torch.no_grad():
        want = model(input_ids=p.input_ids).logits[0]
        got = logits_from_residual(model, block_residuals(model, p.input_ids)[-1][0])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if model.config.model_type in ("gemma2", "gemma3_text"):  # the softcap path is exercised, not a no-op
        with torch.no_grad():
            raw = model.get_output_embeddings()(final_norm(model)(block_residuals(model, p.input_ids)[-1][0]))
        assert (raw - want).abs().max() > 0.1

    watch = [3, 7, 11]
    lens = logit_lens(model, tokenizer, PROMPT, k=4, watch=watch)
    probs = want.float().softmax(-1).numpy()
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :4]
    np.testing.assert_array_equal(lens.top_ids[-1], top)
    np.testing.assert_allclose(lens.top_probs[-1], np.take_along_axis(probs, top, -1), rtol=1e-5, atol=1e-6)
    logits = want.numpy()
    for t in (0, 5, p.n_tokens - 1):
        assert [brute_rank(logits[t], w) for w in watch] == lens.watch_ranks[-1, t].tolist()
        np.testing.assert_allclose(lens.watch_probs[-1, t], probs[t, watch], rtol=1e-5)
    ids = p.input_ids[0].tolist()
    assert [brute_rank(logits[t], ids[t + 1]) for t in range(p.n_tokens - 1)] == lens.next_ranks[-1].tolist()
    assert lens.top_tokens[-1][2][0] == tokenizer.decode([int(top[2, 0])])


def test_block_residuals_match_hidden_states(family_lm) -> None:
    # Intermediate hidden states are un-normed in every family: the hook capture must agree with them.
    family, model, tokenizer = family_lm
    p = encode(model, tokenizer, PROMPT)
    with torch.no_grad():
        hidden = model(input_ids=p.input_ids, output_hidden_states=True).hidden_states
    residuals = block_residuals(model, p.input_ids)
    assert len(residuals) == len(hidden) - 1
    for layer in range(len(residuals) - 1):
        torch.testing.assert_close(residuals[layer], hidden[layer + 1])


def test_every_layer_row_reads_its_block(tiny_lms) -> None:
    model, tokenizer = tiny_lms["llama"]
    p = encode(model, tokenizer, PROMPT)
    lens = logit_lens(model, tokenizer, PROMPT, k=2)
    for layer, residual in enumerate(block_residuals(model, p.input_ids)):
        with torch.no_grad():
            logits = model.lm_head(model.model.norm(residual[0]))
        np.testing.assert_array_equal(lens.top_ids[layer], logits.topk(2, dim=-1).indices.numpy())
    frame = lens.to_frame()
    assert len(frame) == lens.top_ids.size
    assert frame.columns.tolist() == ["layer", "position", "token", "k", "token_id", "top_token", "prob"]


def test_rankings_agree_with_lens(family_lm) -> None:
    family, model, tokenizer = family_lm
    watch = ["cat", "dog", 5]
    r = rankings(model, tokenizer, PROMPT, watch, position=4)
    lens = logit_lens(model, tokenizer, PROMPT, watch=watch)
    np.testing.assert_array_equal(r.ranks, lens.watch_ranks[:, 4])
    np.testing.assert_allclose(r.probs, lens.watch_probs[:, 4], rtol=1e-6)
    assert r.watch_tokens[:2] == ["cat", "dog"]
    assert r.to_frame().shape == (r.ranks.size, 5)
    assert lens.watch_frame().shape == (lens.watch_ranks.size, 6)


def test_bad_inputs_are_config_errors(tiny_lms) -> None:
    model, tokenizer = tiny_lms["gpt2"]
    with pytest.raises(ConfigError, match="out of range"):
        rankings(model, tokenizer, PROMPT, [3], position=99)
    with pytest.raises(ConfigError, match="not one"):
        logit_lens(model, tokenizer, PROMPT, watch=["cat dog"])
    with pytest.raises(ConfigError, match="watched token 'cat' given as text needs a tokenizer"):
        logit_lens(model, None, [1, 2, 3], watch=[4, "cat"])
    with pytest.raises(ConfigError, match="vocabulary"):
        logit_lens(model, tokenizer, [1, 2, 10_000])
    with pytest.raises(ConfigError, match="at least one"):
        rankings(model, tokenizer, PROMPT, [])


def test_chunked_readout_equals_one_chunk(tiny_lms) -> None:
    model, tokenizer = tiny_lms["gemma2"]
    p = encode(model, tokenizer, PROMPT)
    rows = torch.cat([r[0] for r in block_residuals(model, p.input_ids)])
    ids = torch.randint(0, model.config.vocab_size, (rows.shape[0], 3), generator=torch.Generator().manual_seed(0))
    whole = read_rows(model, rows, 4, ids)
    chunked = read_rows(model, rows, 4, ids, chunk_bytes=5 * 4 * model.config.vocab_size)
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b)
