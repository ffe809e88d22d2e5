"""Tiny random causal LMs and a word-level tokenizer that knows the simulator's labels, built in code.

The tokenizer adds the digits and "unknown" to the conftest word list, so all-at-once prompts have their
slot tokens and labels; whitespace (tabs, newlines) separates tokens and is not itself a token.
"""

from __future__ import annotations

from tests.conftest import make_tokenizer, scaled, tiny_llama_config

EXTRA = tuple(str(d) for d in range(11)) + ("unknown", "<start>", "<end>", "Neuron", "Explanation:", "Activations:")


def make_label_tokenizer(with_bos: bool = True):
    """A WordLevel tokenizer over WORDS + digits + the simulator prompt's structural words."""
    return make_tokenizer(with_bos, EXTRA)


SLIDING_WINDOW = 8
"""The tiny Gemma-3's sliding window: far shorter than any prompt of the tests."""


def make_model(family: str, vocab_size: int, positions: int = 64):
    """A tiny random gpt2, llama or gemma3 (sliding window + final logit softcapping) in float32, eval mode."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if family == "gpt2":
        model = tf.GPT2LMHeadModel(
            tf.GPT2Config(
                n_layer=2,
                n_embd=32,
                n_head=2,
                n_positions=positions,
                vocab_size=vocab_size,
                bos_token_id=1,
                eos_token_id=0,
            )
        )
    elif family == "llama":
        model = tf.LlamaForCausalLM(tiny_llama_config(vocab_size, positions))
    elif family == "gemma3":
        cfg = tf.Gemma3TextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=positions,
            sliding_window=SLIDING_WINDOW,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            final_logit_softcapping=5.0,
            bos_token_id=1,
            eos_token_id=0,
            pad_token_id=0,
        )
        model = tf.Gemma3ForCausalLM(cfg)
    else:
        raise ValueError(family)
    return scaled(model)  # larger weights than the default init: peaked, varied predictions
