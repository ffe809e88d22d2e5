"""Tiny random models of every supported family, with the quirks the inspect computations must handle.

Grouped-query attention (num_key_value_heads < num_attention_heads) wherever the family allows it, sliding
windows shorter than the prompt (Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3), q/k norms (Qwen3, Gemma 3),
attention-logit and final-logit softcapping (Gemma 2; final softcap on Gemma 3 too), partial rotary (GPT-NeoX),
Gemma's query_pre_attn_scalar. Norm weights are randomised so a norm gain that is ignored shows up.
"""

from __future__ import annotations

FAMILIES = ("gpt2", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
"""Every family of HOOK_POINTS."""

WINDOW = 3
"""Sliding window of the families that have one; the test prompts are longer."""

SCALE = 12.0
"""Multiplier of the random matrices: peaked attention and logits beyond the softcaps."""

PROMPT = "the cat sat on the red road and the dog ran under the big tree ."


def _config(family: str, vocab_size: int):
    import transformers as tf

    gqa = dict(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=vocab_size,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=0,
        pad_token_id=0,
    )
    if family == "gpt2":
        return tf.GPT2Config(
            n_layer=3, n_embd=32, n_head=4, n_positions=64, vocab_size=vocab_size, bos_token_id=1, eos_token_id=0
        )
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            vocab_size=vocab_size,
            max_position_embeddings=64,
            rotary_pct=0.5,
        )
    if family == "llama":
        return tf.LlamaConfig(**gqa)
    if family == "mistral":
        return tf.MistralConfig(**gqa, sliding_window=WINDOW)
    if family == "qwen2":
        return tf.Qwen2Config(**gqa, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)
    if family == "qwen3":
        return tf.Qwen3Config(**gqa, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)
    if family == "gemma":
        return tf.GemmaConfig(**gqa)
    if family == "gemma2":
        return tf.Gemma2Config(
            **gqa,
            sliding_window=WINDOW,
            query_pre_attn_scalar=12,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=2.0,
        )
    if family == "gemma3_text":
        return tf.Gemma3TextConfig(
            **gqa,
            sliding_window=WINDOW,
            query_pre_attn_scalar=12,
            sliding_window_pattern=2,
            final_logit_softcapping=2.0,
        )
    raise ValueError(family)


def make_model(family: str, vocab_size: int):
    """A tiny random causal LM of a family, in eval mode, float32, with randomised norm weights."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(family, vocab_size))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(SCALE)
            elif "norm" in name or "ln" in name:
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5) - (1.0 if "gemma" in family else 0.0))
    return model.eval()
