"""Config validation: every bad value names the field and what was expected; the config package is the
bottom layer."""

import ast
import pathlib
import re

import pytest

from jaxslim.config import (
    CheckpointConfig,
    MeshConfig,
    ModelConfig,
    MoeConfig,
    OptimConfig,
    StageConfig,
    TrainConfig,
)

TINY = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"arch": "t5"}, "ModelConfig.arch must be one of ('bert', 'gpt2', 'llama'), got 't5'"),
        ({"d_model": 0}, "ModelConfig.d_model must be an integer > 0, got 0"),
        ({"n_heads": 5}, "ModelConfig.n_heads must divide d_model=32"),
        ({"n_kv_heads": 3}, "ModelConfig.n_kv_heads must divide n_heads=4, got 3"),
        ({"activation": "swish"}, "ModelConfig.activation must be one of"),
        ({"dtype": "int8"}, "ModelConfig.dtype must be one of ('float32', 'bfloat16', 'float16')"),
        ({"head": "mlm"}, "ModelConfig.head='mlm' needs arch='bert'"),
        ({"layer_heads": (4, 4)}, "layer_heads (per-layer widths) needs scan_layers=False"),
        ({"layer_heads": (4,), "scan_layers": False}, "must be a tuple of n_layers=2 integers"),
        (
            {"layer_ffn": (64, 65), "scan_layers": False},
            "ModelConfig.layer_ffn must be a tuple of integers in [0, d_ff=64] or None, got (64, 65)",
        ),
        ({"norm_eps": -1.0}, "ModelConfig.norm_eps must be a number > 0"),
    ],
)
def test_model_config_errors(changes, message):
    kw = {"arch": "gpt2", **TINY, **changes}
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelConfig(**kw)


def test_gqa_slimmed_heads_must_keep_groups():
    with pytest.raises(ValueError, match="multiples of the query group size 2"):
        ModelConfig.llama(**TINY, n_kv_heads=2, scan_layers=False, layer_heads=(4, 3))


def test_derived_values():
    cfg = ModelConfig.llama(**TINY, n_kv_heads=2, scan_layers=False, layer_heads=(4, 2), layer_ffn=(64, 8))
    assert cfg.head_dim_ == 8 and cfg.causal and cfg.rope and cfg.gated_mlp and cfg.rms_norm
    assert [cfg.heads_in(i) for i in range(2)] == [4, 2]
    assert [cfg.kv_heads_in(i) for i in range(2)] == [2, 1]
    assert [cfg.ffn_in(i) for i in range(2)] == [64, 8]
    assert not cfg.uniform
    bert = ModelConfig.bert(**TINY)
    assert not bert.causal and not bert.pre_norm and bert.norm_eps == 1e-12
    assert hash(bert) == hash(ModelConfig.bert(**TINY))  # usable as a jit static argument


def test_mesh_config_sizes_and_errors():
    assert MeshConfig().sizes(8) == (8, 1, 1, 1, 1)
    assert MeshConfig(data=2, fsdp=-1, tensor=2).sizes(8) == (2, 2, 1, 2, 1)
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        MeshConfig(data=-1, tensor=-1)
    with pytest.raises(ValueError, match="MeshConfig.tensor must be a positive integer or -1, got 0"):
        MeshConfig(tensor=0)
    with pytest.raises(ValueError, match="needs 4 devices, 8 are available"):
        MeshConfig(data=2, tensor=2).sizes(8)
    with pytest.raises(ValueError, match="not divisible by the fixed axes' product 3"):
        MeshConfig(data=-1, tensor=3).sizes(8)
    with pytest.raises(ValueError, match="maps 'mlp' to unknown mesh axes \\['model'\\]"):
        MeshConfig(rules=(("mlp", "model"),))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: StageConfig(width=2, depth=True), "StageConfig.depth must be one of (1, 2), got True"),
        (lambda: MoeConfig(num_experts=True), "MoeConfig.num_experts must be an integer > 0, got True"),
        (lambda: MoeConfig(jitter=1.0), "MoeConfig.jitter must be a number in [0, 1), got 1.0"),
        (lambda: OptimConfig(lr=float("nan")), "OptimConfig.lr must be a number > 0, got nan"),
        (lambda: OptimConfig(clip_norm=float("inf")), "OptimConfig.clip_norm must be a number >= 0, got inf"),
        (
            lambda: OptimConfig(agvm_modules=()),
            "OptimConfig.agvm_modules must be a non-empty tuple of strings",
        ),
        (lambda: ModelConfig.gpt2(**TINY, head_dim=0), "ModelConfig.head_dim must be an integer > 0 or None"),
        (lambda: ModelConfig.gpt2(**TINY, moe={}), "ModelConfig.moe must be a MoeConfig or None, got {}"),
        (
            lambda: ModelConfig.gpt2(**TINY, scan_layers=False, layer_ffn=(64, -1)),
            "ModelConfig.layer_ffn must be a tuple of integers in [0, d_ff=64] or None, got (64, -1)",
        ),
        (
            lambda: ModelConfig.llama(**TINY, eos_token_id=()),
            "ModelConfig.eos_token_id must be an integer or a non-empty",
        ),
        (lambda: MeshConfig(rules=(("mlp",),)), "MeshConfig.rules must be a tuple of tuples (a string, "),
        (lambda: TrainConfig(workdir=" "), "TrainConfig.workdir must be a non-empty string, got ' '"),
        (lambda: TrainConfig(data=None), "TrainConfig.data must be a DataConfig, got None"),
        (lambda: CheckpointConfig(codec="excp"), "CheckpointConfig.codec must be a CodecConfig or None"),
    ],
)
def test_the_validator_reads_annotations_and_declared_ranges(build, message):
    with pytest.raises(ValueError) as err:
        build()
    assert str(err.value).startswith(message)


def test_config_is_the_bottom_layer():
    """The config package imports nothing from jaxslim but itself (at module or function level)."""
    root = pathlib.Path(__file__).resolve().parents[1] / "jaxslim" / "config"
    for file in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith("jaxslim") or name.startswith("jaxslim.config"), (file.name, name)
