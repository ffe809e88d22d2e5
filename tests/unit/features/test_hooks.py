"""Hook resolution, capture and editing on tiny random models of every supported family.

Each TransformerLens name must land on the tensor TransformerLens defines: checked by the residual-stream
identities (resid_mid = resid_pre + attn_out, resid_post = resid_mid + mlp_out), by re-running the model's own
modules on captured inputs, and against output_hidden_states.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from neuron_explainer.activations.hookpoints import HOOK_POINTS
from neuron_explainer.errors import ConfigError
from neuron_explainer.features.hooks import (
    TL_HOOKS,
    HookSpec,
    add_at_hook,
    capture,
    capture_activations,
    get_module,
    resolve_hook,
)

SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, vocab_size=50)
GQA = dict(SMALL, num_key_value_heads=2, max_position_embeddings=64)
CONFIGS = {
    "gpt2": lambda: tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=50),
    "gpt_neox": lambda: tf.GPTNeoXConfig(**SMALL, max_position_embeddings=64),
    "gpt_neox_serial": lambda: tf.GPTNeoXConfig(**SMALL, max_position_embeddings=64, use_parallel_residual=False),
    "llama": lambda: tf.LlamaConfig(**GQA),
    "mistral": lambda: tf.MistralConfig(**GQA),
    "qwen2": lambda: tf.Qwen2Config(**GQA),
    "qwen3": lambda: tf.Qwen3Config(**GQA, head_dim=16),
    "gemma": lambda: tf.GemmaConfig(**GQA, head_dim=16),
    "gemma2": lambda: tf.Gemma2Config(**GQA, head_dim=16),
    "gemma3_text": lambda: tf.Gemma3TextConfig(**GQA, head_dim=16),
}
IDS = torch.tensor([[3, 7, 1, 9, 4, 2], [5, 5, 8, 0, 11, 6]])


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    built = {}
    for name, make in CONFIGS.items():
        torch.manual_seed(0)
        model = tf.AutoModelForCausalLM.from_config(make()).eval()
        with torch.no_grad():  # norms with non-trivial gains, so a wrong side of a norm shows
            for param_name, param in model.named_parameters():
                if "norm" in param_name or ".ln_" in param_name:
                    param.add_(torch.randn_like(param) * 0.5)
        built[name] = model
    return built


def test_every_family_is_covered() -> None:
    assert set(HOOK_POINTS) <= {name for name in CONFIGS}


def grab(model: torch.nn.Module, model_type: str, layer: int, *suffixes: str) -> dict[str, torch.Tensor]:
    specs = {s: resolve_hook(model_type, f"blocks.{layer}.{s}", config=model.config) for s in suffixes}
    with capture(model, list(specs.values())) as sink, torch.no_grad():
        model(input_ids=IDS, use_cache=False)
    return {s: sink[spec] for s, spec in specs.items()}


def inner(model_type: str, suffix: str) -> str:
    """Module path of a TL hook inside block 0."""
    return resolve_hook(model_type, f"blocks.0.{suffix}").module.split(".0.", 1)[1]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_residual_identities_and_hidden_states(models, name: str) -> None:
    model = models[name]
    model_type = model.config.model_type
    parallel = name == "gpt_neox"
    names = [s for s in TL_HOOKS if not (parallel and s == "hook_resid_mid")]
    got = grab(model, model_type, 0, *names)
    with torch.no_grad():
        hidden = model(input_ids=IDS, output_hidden_states=True, use_cache=False).hidden_states
    torch.testing.assert_close(got["hook_resid_pre"], hidden[0])
    torch.testing.assert_close(got["hook_resid_post"], hidden[1])
    assert grab(model, model_type, 1, "hook_resid_pre")["hook_resid_pre"].equal(got["hook_resid_post"])
    if parallel:
        torch.testing.assert_close(
            got["hook_resid_post"], got["hook_resid_pre"] + got["hook_attn_out"] + got["hook_mlp_out"]
        )
        torch.testing.assert_close(got["hook_mlp_in"], got["hook_resid_pre"])
    else:
        torch.testing.assert_close(got["hook_resid_mid"], got["hook_resid_pre"] + got["hook_attn_out"])
        torch.testing.assert_close(got["hook_resid_post"], got["hook_resid_mid"] + got["hook_mlp_out"])
        torch.testing.assert_close(got["hook_mlp_in"], got["hook_resid_mid"])
    point = HOOK_POINTS[model_type]
    block = get_module(model, f"{point.layers_path}.0")
    with torch.no_grad():
        ln2 = get_module(block, point.mlp_norm_path)(got["hook_mlp_in"])
        torch.testing.assert_close(got["ln2.hook_normalized"], ln2)
        torch.testing.assert_close(got["mlp.hook_in"], ln2)
        mlp_out = get_module(block, point.mlp_path)(ln2)
        torch.testing.assert_close(got["mlp.hook_out"], mlp_out)
        out_proj = get_module(block, point.module_path)
        torch.testing.assert_close(out_proj(got["mlp.hook_post"]), mlp_out, atol=1e-5, rtol=1e-5)
        if model_type in ("gemma2", "gemma3_text"):  # the post-MLP norm is part of hook_mlp_out
            torch.testing.assert_close(got["hook_mlp_out"], block.post_feedforward_layernorm(mlp_out))
        else:
            torch.testing.assert_close(got["hook_mlp_out"], mlp_out)
        z_out = get_module(block, inner(model_type, "attn.hook_z"))(got["attn.hook_z"])
        attn_out = got["hook_attn_out"]
        if model_type in ("gemma2", "gemma3_text"):
            z_out = block.post_attention_layernorm(z_out)
        torch.testing.assert_close(z_out, attn_out, atol=1e-5, rtol=1e-5)
        ln1 = get_module(block, inner(model_type, "ln1.hook_normalized"))
        torch.testing.assert_close(got["ln1.hook_normalized"], ln1(got["hook_resid_pre"]))


def test_neuron_hook_by_hand(models) -> None:
    for name in ("gpt2", "llama"):
        model = models[name]
        got = grab(model, name, 1, "mlp.hook_in", "mlp.hook_post")
        mlp = get_module(model, f"{HOOK_POINTS[name].layers_path}.1.mlp")
        x = got["mlp.hook_in"]
        with torch.no_grad():
            if name == "gpt2":
                expected = mlp.act(mlp.c_fc(x))
            else:
                expected = torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x)
        torch.testing.assert_close(got["mlp.hook_post"], expected)


@pytest.mark.parametrize(
    ("model_type", "name", "expected"),
    [
        ("llama", "model.layers.5.mlp:output", HookSpec("model.layers.5.mlp", "output")),
        ("gpt2", "transformer.h.3", HookSpec("transformer.h.3", "output")),
        (None, "model.layers.2.self_attn.o_proj.input", HookSpec("model.layers.2.self_attn.o_proj", "input")),
        (None, "model.layers.2.output", HookSpec("model.layers.2", "output")),
        ("gpt2", "blocks.1.hook_resid_pre", HookSpec("transformer.h.1", "input")),
        ("gpt2", "blocks.1.hook_resid_mid", HookSpec("transformer.h.1.ln_2", "input")),
        ("gpt2", "blocks.1.mlp.hook_post", HookSpec("transformer.h.1.mlp.c_proj", "input")),
        ("gpt_neox", "blocks.0.hook_attn_out", HookSpec("gpt_neox.layers.0.attention", "output")),
        ("qwen3", "blocks.4.ln2.hook_normalized", HookSpec("model.layers.4.post_attention_layernorm", "output")),
        ("gemma2", "blocks.3.hook_mlp_out", HookSpec("model.layers.3.post_feedforward_layernorm", "output")),
        ("gemma3_text", "blocks.3.hook_resid_mid", HookSpec("model.layers.3.pre_feedforward_layernorm", "input")),
    ],
)
def test_resolve_hook_table(model_type, name, expected) -> None:
    assert resolve_hook(model_type, name, n_layers=6) == expected


@pytest.mark.parametrize(
    ("model_type", "name", "message"),
    [
        ("llama", "blocks.9.hook_resid_post", "layer 9 out of range, this model has layers 0..5"),
        ("llama", "model.layers.6.mlp", "layer 6 out of range"),
        (
            "llama",
            "blocks.1.hook_q",
            "unsupported TransformerLens hook 'blocks.1.hook_q'; supported: blocks.L.<hook_resid_pre",
        ),
        ("llama", "hook_embed", "unsupported TransformerLens hook 'hook_embed'"),
        (
            "bert",
            "blocks.1.hook_resid_post",
            "no TransformerLens hook mapping for model type 'bert'; supported: gemma,",
        ),
        (None, "blocks.1.hook_resid_post", "is a TransformerLens hook name: give the model type"),
        ("gpt_neox", "blocks.1.hook_resid_mid", "does not exist in gpt_neox with a parallel residual"),
        ("llama", "model.layers.1:sideways", "the side after ':' must be input or output"),
        ("llama", "model..layers", "malformed hook 'model..layers'"),
    ],
)
def test_resolve_hook_refusals(model_type, name, message) -> None:
    with pytest.raises(ConfigError) as e:
        resolve_hook(model_type, name, n_layers=6)
    assert message in str(e.value)


def test_serial_neox_has_resid_mid(models) -> None:
    spec = resolve_hook("gpt_neox", "blocks.1.hook_resid_mid", config=models["gpt_neox_serial"].config)
    assert spec == HookSpec("gpt_neox.layers.1.post_attention_layernorm", "input")


def test_missing_module_message(models) -> None:
    with pytest.raises(ConfigError, match=r"model has no module 'model.layers.7.mlp': model.layers has no '7'"):
        capture_activations(models["llama"], [HookSpec("model.layers.7.mlp")], IDS)


def hook_counts(model: torch.nn.Module) -> list[tuple[int, int]]:
    """Hooks per module (transformers installs some of its own)."""
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


def test_stop_forward_skips_the_rest_and_hooks_are_removed(models) -> None:
    model = models["llama"]
    before = hook_counts(model)
    calls = []
    later = model.lm_head.register_forward_hook(lambda *_: calls.append(1))
    spec = HookSpec("model.layers.0.mlp", "input")
    after = []
    with capture(model, [spec], stop_forward=True) as sink:
        model(input_ids=IDS, use_cache=False)
        after.append(1)  # never reached: the forward is cut short
    later.remove()
    assert calls == [] and after == [] and sink[spec].shape == (2, 6, 32)
    with pytest.raises(RuntimeError, match="boom"), capture(model, [spec]):
        raise RuntimeError("boom")
    assert hook_counts(model) == before


def test_add_at_hook_output_and_input(models) -> None:
    model = models["gpt2"]
    before = hook_counts(model)
    delta = torch.randn(32)
    out0, in1 = HookSpec("transformer.h.0", "output"), HookSpec("transformer.h.1", "input")
    clean = capture_activations(model, [out0, in1], IDS)
    with add_at_hook(model, out0, delta), capture(model, [in1]) as sink, torch.no_grad():
        model(input_ids=IDS)
    torch.testing.assert_close(sink[in1], clean[in1] + delta)
    mlp_in, mlp_out = HookSpec("transformer.h.1.mlp", "input"), HookSpec("transformer.h.1.mlp", "output")
    with add_at_hook(model, mlp_in, lambda x: 0.5 * x), capture(model, [mlp_out]) as sink, torch.no_grad():
        model(input_ids=IDS)
    base = capture_activations(model, [mlp_in], IDS)[mlp_in]
    with torch.no_grad():
        torch.testing.assert_close(sink[mlp_out], model.transformer.h[1].mlp(1.5 * base))
    assert hook_counts(model) == before
