import pandas as pd
import pytest

from neuron_explainer.errors import ModelError
from neuron_explainer.inspect import (
    activation_factors,
    attention_maps,
    firing_neurons,
    input_saliency,
    load_model,
    logit_lens,
    neuron_output_tokens,
    neuron_view,
    output_tokens_table,
    rankings,
)


@pytest.fixture(scope="module")
def tiny_opt():
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    cfg = OPTConfig(
        hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50, word_embed_proj_dim=16
    )
    return OPTForCausalLM(cfg).eval()


CALLS = {
    "logit_lens": lambda m: logit_lens(m, None, [1, 2, 3]),
    "rankings": lambda m: rankings(m, None, [1, 2, 3], [4]),
    "attention_maps": lambda m: attention_maps(m, None, [1, 2, 3]),
    "neuron_view": lambda m: neuron_view(m, None, [1, 2, 3], 0, 0),
    "input_saliency": lambda m: input_saliency(m, None, [1, 2, 3], target=4),
    "activation_factors": lambda m: activation_factors(m, None, [1, 2, 3]),
    "neuron_output_tokens": lambda m: neuron_output_tokens(m, None, 0, [0]),
    "output_tokens_table": lambda m: output_tokens_table(m, None),
    "firing_neurons": lambda m: firing_neurons(
        m, None, [1, 2, 3], pd.DataFrame({"layer": [0], "neuron": [0], "explanation": ["x"], "score": [0.5]})
    ),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_unsupported_family_is_refused_with_the_list(tiny_opt, name: str) -> None:
    with pytest.raises(ModelError) as info:
        CALLS[name](tiny_opt)
    message = str(info.value)
    assert "'opt'" in message
    for family in ("gpt2", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"):
        assert family in message


def test_load_model_entry_point(tiny_model_dirs, tmp_path, tiny_opt) -> None:
    model, tokenizer = load_model(str(tiny_model_dirs["gpt2"]))
    lens = logit_lens(model, tokenizer, "the cat sat")
    assert lens.tokens == ["the", "cat", "sat"] and lens.top_ids.shape == (2, 3, 1)
    tiny_opt.save_pretrained(tmp_path / "opt")
    from tests.conftest import make_tokenizer

    make_tokenizer(with_bos=False)[0].save_pretrained(tmp_path / "opt")
    with pytest.raises(ModelError, match="unsupported model type 'opt'"):
        load_model(str(tmp_path / "opt"))
