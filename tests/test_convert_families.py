"""Hugging Face PyTorch parity of the Llama-style families and options beyond plain Llama, both ways:
RoPE scalings (linear, dynamic, yarn, llama3 in the older ``rope_scaling`` form), Mistral's sliding
window, Qwen2's q/k/v biases with a window on some layers, Qwen3's q/k norms, Phi-3's fused
projections with a window or partial rotary embeddings, Gemma's 1 + w norms and embedding scale,
Gemma 2's soft-capping and alternating local/global layers, Gemma 3's q/k norms and RoPE per
layer type, OLMo 2's output norms and q/k norms over all heads,
GPT-NeoX's parallel residual and partial rotary embeddings, Qwen3-MoE's routed experts between
dense layers, Qwen2-MoE's gated shared expert, Mixtral's sliding window.

Every model is tiny and random with every 1-D parameter perturbed, and every input long enough that
the feature under test changes the reference's output (asserted against the same weights with the
feature switched off).
"""

import json

import numpy as np
import pytest
from hf_models import (
    VOCAB,
    assert_exports_and_reloads,
    assert_parity,
    assert_round_trip_bit_exact,
    build_hf,
    max_diff,
    torch_outputs,
)

from conftest import require
from jaxslim.config import ModelConfig, RopeScaling
from jaxslim.convert import config_from_hf, config_to_hf, load_hf, save_hf

pytestmark = pytest.mark.torch

TOL = 1e-5  # max abs difference from transformers, fp32
LENGTH = 24  # beyond the tiny context (16) and the windows, so scalings and windows matter

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=40,
    max_position_embeddings=16,
    tie_word_embeddings=False,
    initializer_range=0.2,  # sharp attention, so positions and windows change the logits clearly
)

# kind -> (transformers config class, causal LM class, config arguments, the same without the feature)
FAMILIES = {
    "llama_linear": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(rope_parameters={"rope_type": "linear", "factor": 3.0, "rope_theta": 500.0}),
        dict(rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
    ),
    "llama_dynamic": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 500.0}),
        dict(rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
    ),
    "llama_yarn": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            rope_parameters={
                "rope_type": "yarn",
                "factor": 4.0,
                "rope_theta": 500.0,
                "original_max_position_embeddings": 8,
                "beta_fast": 8.0,
            }
        ),
        dict(rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
    ),
    "llama3": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            rope_parameters={
                "rope_type": "llama3",
                "factor": 8.0,
                "rope_theta": 500.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            bos_token_id=5,
            eos_token_id=[6, 7, 8],
        ),
        dict(
            rope_parameters={"rope_type": "default", "rope_theta": 500.0},
            bos_token_id=5,
            eos_token_id=[6, 7, 8],
        ),
    ),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=5), dict(sliding_window=None)),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(use_sliding_window=True, sliding_window=5, max_window_layers=1, tie_word_embeddings=True),
        dict(use_sliding_window=False, tie_word_embeddings=True),
    ),
    "qwen3": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        dict(head_dim=24, use_sliding_window=True, sliding_window=6, max_window_layers=0),
        dict(head_dim=24, use_sliding_window=False),
    ),
    "phi3": (
        "Phi3Config",
        "Phi3ForCausalLM",
        dict(sliding_window=5, original_max_position_embeddings=16, pad_token_id=0, eos_token_id=1),
        dict(sliding_window=None, original_max_position_embeddings=16, pad_token_id=0, eos_token_id=1),
    ),
    "phi3_partial": (
        "Phi3Config",
        "Phi3ForCausalLM",
        dict(
            rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5},
            pad_token_id=0,
            eos_token_id=1,
        ),
        dict(
            rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 1.0},
            pad_token_id=0,
            eos_token_id=1,
        ),
    ),
    "gemma": (
        "GemmaConfig",
        "GemmaForCausalLM",
        dict(
            head_dim=16,
            hidden_act="gelu",
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 100.0},
        ),
        dict(head_dim=16, hidden_act="gelu", rope_parameters={"rope_type": "default", "rope_theta": 100.0}),
    ),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        dict(
            head_dim=16,
            sliding_window=5,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
            query_pre_attn_scalar=10,
        ),
        dict(
            head_dim=16,
            layer_types=["full_attention"] * 2,
            attn_logit_softcapping=None,
            final_logit_softcapping=None,
            query_pre_attn_scalar=10,
        ),
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            head_dim=16,
            sliding_window=5,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 50.0},
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000.0},
            },
        ),
        dict(
            head_dim=16,
            sliding_window=5,
            layer_types=["full_attention"] * 2,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 50.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000.0},
            },
        ),
    ),
    "olmo2": (
        "Olmo2Config",
        "Olmo2ForCausalLM",
        dict(
            rope_parameters={
                "rope_type": "yarn",
                "factor": 4.0,
                "rope_theta": 500.0,
                "original_max_position_embeddings": 8,
            }
        ),
        dict(rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
    ),
    "neox": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        dict(
            use_parallel_residual=True,
            rope_parameters={"rope_type": "default", "rope_theta": 100.0, "partial_rotary_factor": 0.5},
        ),
        dict(
            use_parallel_residual=False,
            rope_parameters={"rope_type": "default", "rope_theta": 100.0, "partial_rotary_factor": 0.5},
        ),
    ),
    "neox_sequential": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        dict(
            use_parallel_residual=False,
            rope_parameters={
                "rope_type": "dynamic",
                "factor": 2.0,
                "rope_theta": 100.0,
                "partial_rotary_factor": 0.25,
            },
        ),
        dict(
            use_parallel_residual=False,
            rope_parameters={"rope_type": "default", "rope_theta": 100.0, "partial_rotary_factor": 0.25},
        ),
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=12,
            norm_topk_prob=True,
            decoder_sparse_step=2,
        ),
        dict(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=12,
            norm_topk_prob=False,
            decoder_sparse_step=2,
        ),
    ),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=12,
            shared_expert_intermediate_size=20,
            decoder_sparse_step=2,
        ),
        dict(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=12,
            shared_expert_intermediate_size=20,
            decoder_sparse_step=2,
        ),
    ),
    "mixtral_window": (
        "MixtralConfig",
        "MixtralForCausalLM",
        dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=5),
        dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=None),
    ),
}
KINDS = list(FAMILIES)


def build(kind: str, *, feature: bool = True, seed: int = 0):
    require("torch")
    require("transformers")
    config_cls, model_cls, on, off = FAMILIES[kind]
    return build_hf(config_cls, model_cls, {**_COMMON, **(on if feature else off)}, seed=seed)


def feature_off(kind: str, model):
    """The same weights in the same family with the feature under test switched off."""
    off = build(kind, feature=False)
    state = model.state_dict()
    if kind == "qwen2_moe":  # no config switch removes the shared expert: silence it instead
        state = {k: v * 0 if "shared_expert.down_proj" in k else v for k, v in state.items()}
    off.load_state_dict(state)
    return off.eval()


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (2, LENGTH))
    mask = np.ones((2, LENGTH), np.int64)
    mask[1, -5:] = 0
    return ids, mask


def _to_old_rope_form(path):
    """Rewrites a saved config.json in the older ``rope_scaling`` + ``rope_theta`` form that real
    Llama 3.x checkpoints ship."""
    hf = json.loads((path / "config.json").read_text())
    params = hf.pop("rope_parameters")
    hf["rope_theta"] = params.pop("rope_theta")
    hf["rope_scaling"] = params
    (path / "config.json").write_text(json.dumps(hf))


@pytest.fixture(scope="module", params=KINDS)
def saved(request, tmp_path_factory):
    kind = request.param
    model = build(kind)
    path = tmp_path_factory.mktemp(kind)
    model.save_pretrained(path)
    if kind == "llama3":
        _to_old_rope_form(path)
    return kind, model, path


def test_parity_and_the_feature_matters(saved):
    kind, ref_model, path = saved
    ids, mask = inputs()
    ref_hidden, ref_logits = torch_outputs(ref_model, ids, mask)
    _, off_logits = torch_outputs(feature_off(kind, ref_model), ids, mask)
    assert max_diff(off_logits, ref_logits, mask) > 100 * TOL, "the input does not exercise the feature"
    for scan in (True, False):
        assert_parity(load_hf(path, scan_layers=scan), ref_hidden, ref_logits, ids, mask, TOL)
    # left padding: the window counts positions in the sequence, as transformers' does
    left = mask[:, ::-1].copy()
    ref_hidden, _ = torch_outputs(ref_model, ids, left)
    assert max_diff(load_hf(path)(ids.astype(np.int32), attention_mask=left).hidden, ref_hidden, left) <= TOL


def test_save_hf_writes_the_same_family_that_reloads_with_the_same_outputs(saved, tmp_path):
    _, ref_model, path = saved
    out_dir = save_hf(load_hf(path), tmp_path / "export")
    reloaded = assert_exports_and_reloads(ref_model, path, out_dir, *inputs(seed=1))
    for field in ("bos_token_id", "eos_token_id", "pad_token_id", "sliding_window"):
        assert getattr(reloaded.config, field, None) == getattr(ref_model.config, field, None), field


def test_load_save_load_is_bit_exact(saved, tmp_path):
    _, _, path = saved
    assert_round_trip_bit_exact(path, tmp_path)


def test_config_round_trip(saved):
    _, _, path = saved
    cfg = config_from_hf(json.loads((path / "config.json").read_text()))
    assert config_from_hf(config_to_hf(cfg)) == cfg


def test_configs_say_what_they_read():
    base = {k: v for k, v in _COMMON.items() if k != "tie_word_embeddings"}
    llama3 = config_from_hf(
        {
            "architectures": ["LlamaForCausalLM"],
            **base,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "eos_token_id": [128001, 128008, 128009],
        }
    )
    assert llama3.rope_theta == 500000.0
    assert llama3.rope_scaling == RopeScaling("llama3", 8.0, original_max_len=8192)
    assert llama3.eos_token_id == (128001, 128008, 128009)
    legacy = config_from_hf(
        {"architectures": ["LlamaForCausalLM"], **base, "rope_scaling": {"type": "linear", "factor": 2}}
    )
    assert legacy.rope_scaling == RopeScaling("linear", 2.0)
    qwen2 = config_from_hf({"architectures": ["Qwen2ForCausalLM"], **base, "sliding_window": 4096})
    assert (qwen2.attn_bias, qwen2.out_bias, qwen2.sliding_window) == (
        True,
        False,
        None,
    )  # use_sliding_window off
    qwen3 = config_from_hf({"architectures": ["Qwen3ForCausalLM"], **base})
    assert qwen3.qk_norm and qwen3.head_dim_ == 128 and not qwen3.attn_bias
    pythia = config_from_hf(
        {"architectures": ["GPTNeoXForCausalLM"], **base, "rotary_pct": 0.25, "rotary_emb_base": 1000}
    )
    assert (pythia.partial_rotary_factor, pythia.rope_theta, pythia.parallel_residual) == (0.25, 1000.0, True)
    assert pythia.rope and pythia.arch == "gpt2" and not pythia.tie_embeddings
    mistral = config_from_hf({"architectures": ["MistralForCausalLM"], **base})
    assert mistral.sliding_window == 4096 and mistral.hf_family == "mistral"


def test_refusals_name_the_option():
    base = {"architectures": ["LlamaForCausalLM"], **_COMMON}
    # a "llamafied" Mistral: transformers' Llama ignores the window, jaxslim refuses to guess
    with pytest.raises(ValueError, match=r"sliding_window=4 .*MistralForCausalLM"):
        config_from_hf({**base, "sliding_window": 4})
    assert config_from_hf({**base, "sliding_window": 16}).sliding_window is None  # covers the context
    with pytest.raises(ValueError, match="rope type 'longrope' is not supported"):
        config_from_hf({**base, "rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}})
    with pytest.raises(ValueError, match="partial_rotary_factor=0.5"):
        config_from_hf({**base, "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}})
    phi3 = {**base, "architectures": ["Phi3ForCausalLM"]}
    with pytest.raises(ValueError, match="Phi-3 rope type 'su'"):
        config_from_hf({**phi3, "rope_scaling": {"type": "su", "short_factor": [1.0], "long_factor": [2.0]}})
    cfg = ModelConfig.llama(vocab_size=32, d_model=16, n_layers=2, n_heads=2, d_ff=32)
    with pytest.raises(ValueError, match=r"partial_rotary_factor=0.5 \(Llama rotates the whole head\)"):
        config_to_hf(cfg.replace(partial_rotary_factor=0.5))
    with pytest.raises(ValueError, match=r"partial_rotary_factor=0.75\) = 3"):
        cfg.replace(head_dim=4, partial_rotary_factor=0.75)
    with pytest.raises(
        ValueError, match=r"Hugging Face Llama: sliding_window=4 \(Llama has no sliding window\)"
    ):
        config_to_hf(cfg.replace(sliding_window=4))
    with pytest.raises(ValueError, match=r"qk_norm=True"):
        config_to_hf(cfg.replace(qk_norm=True))
    with pytest.raises(ValueError, match=r"attn_out_bias=False"):
        config_to_hf(cfg.replace(attn_bias=True, attn_out_bias=False))
    with pytest.raises(ValueError, match=r"Mistral: sliding_layers=\(1,\)"):
        config_to_hf(cfg.replace(sliding_window=4, sliding_layers=(1,), hf_family="mistral"))
    with pytest.raises(ValueError, match="hf_family='t5' is not a family jaxslim converts"):
        config_to_hf(cfg.replace(hf_family="t5"))
    with pytest.raises(
        ValueError,
        match=r"sliding_layers must be a tuple of integers in \[0, n_layers=2\) or None, got \(2,\)",
    ):
        cfg.replace(sliding_window=4, sliding_layers=(2,))
    with pytest.raises(ValueError, match="RopeScaling.kind must be one of"):
        RopeScaling("longrope", 2.0)
