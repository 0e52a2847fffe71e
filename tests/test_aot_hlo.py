"""The pieces of ``jaxslim-aot`` that need no libtpu: topology names, collectives read from HLO text
(loop trip counts, the TPU's all-reduce-scatter fusions, combined collectives), FLOPs, roofline."""

import pytest

from jaxslim.aot import CHIPS, collectives, parse_topology, remat_flops, roofline, summarize, train_flops
from jaxslim.config import ModelConfig

HLO = """\
HloModule jit_step, entry_computation_layout={()->()}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %s = f32[] add(%x, %y)
}

%all-reduce-scatter.1 (input.1: bf16[64,32]) -> bf16[16,32] {
  %input.1 = bf16[64,32]{1,0} parameter(0)
  %all-reduce.9 = bf16[64,32]{1,0:T(8,128)} all-reduce(%input.1), channel_id=1, replica_groups=[1,4]<=[4], to_apply=%add
  ROOT %ds = bf16[16,32]{1,0} dynamic-slice(%all-reduce.9, %c, %c), dynamic_slice_sizes={16,32}
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]) parameter(0)
  %ag = bf16[64,32]{1,0} all-gather(%w), channel_id=2, replica_groups={{0,1,2,3}}, dimensions={0}
  %f = bf16[16,32]{1,0} fusion(%g), kind=kCustom, calls=%all-reduce-scatter.1
  %ar = (f32[], f32[8]{0}, /*index=2*/f32[4,4]{1,0}) all-reduce(%a, %b, %c), replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_0','axis_1'}, to_apply=%add
  ROOT %t = (s32[], f32[8]) tuple(%i, %v)
}

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]) parameter(0)
  %n = s32[]{:T(128)} constant(12)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %w = (s32[], f32[8]) while(%init), condition=%cond, body=%body
  %cp = f32[8]{0} collective-permute-start(%a), source_target_pairs={{0,1},{1,0}}
  ROOT %r = f32[8]{0} get-tuple-element(%w), index=1
}
"""


def test_collectives_count_loop_trips_and_read_reduce_scatter_fusions():
    found = collectives(HLO)
    kinds = sorted((c.kind, c.dtype, c.shape, c.group, c.runs) for c in found)
    assert kinds == [
        ("all-gather", "bf16", (64, 32), 4, 12),
        ("all-reduce", "f32", (), 4, 12),
        ("all-reduce", "f32", (4, 4), 4, 12),
        ("all-reduce", "f32", (8,), 4, 12),
        ("collective-permute", "f32", (8,), 2, 1),
        ("reduce-scatter", "bf16", (64, 32), 4, 12),
    ]
    s = summarize(found)
    assert s["reduce-scatter"]["runs"] == 12 and s["reduce-scatter"]["largest"] == "bf16[64,32]"
    # a ring reduce-scatter sends (n - 1) / n of its input, an all-reduce twice that
    assert s["reduce-scatter"]["sent_bytes"] == 12 * 64 * 32 * 2 * 3 / 4
    assert s["all-reduce"]["sent_bytes"] == 12 * (1 + 8 + 16) * 4 * 2 * 3 / 4


@pytest.mark.parametrize(
    "spec, name, chips",
    [
        ("v5e-256", "v5e:16x16", 256),
        ("v5e:2x2", "v5e:2x2", 4),
        ("v5p-128", "v5p:4x4x4", 64),
        ("v4-32", "v4:2x2x4", 16),
        ("v6e-64", "v6e:8x8", 64),
    ],
)
def test_topology_names(spec, name, chips):
    t = parse_topology(spec)
    assert (t.name, t.chips) == (name, chips)
    assert parse_topology(spec, slices=2).chips == 2 * chips


@pytest.mark.parametrize(
    "spec, match",
    [("v7x-8", "unknown TPU topology"), ("v5e-12", "known sizes: v5e-1, v5e-4"), ("v5p:4x4", "3 axes")],
)
def test_bad_topology_names_say_what_is_expected(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_topology(spec)


def test_flops_and_roofline():
    cfg = ModelConfig.llama(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_ff=11008)
    flops = train_flops(cfg, batch=1, seq_len=2048)
    # 6 N T for Llama-2-7B's 6.7e9 weights (embedding lookup excluded), plus causal attention
    assert flops == pytest.approx(6 * 6.61e9 * 2048 + 3 * 2 * 2048**2 * 4096 * 32, rel=0.01)
    est = roofline(flops, 0.0, CHIPS["v5e"])
    assert est["mfu"] == 1.0 and est["step_s"] == pytest.approx(flops / 197e12)
    assert roofline(flops, 1e12, CHIPS["v5e"])["mfu"] < 1.0


def test_remat_recomputation_lowers_the_mfu_bound_by_what_the_policy_does_not_keep():
    from jaxslim.config import REMAT_POLICIES

    cfg = ModelConfig.llama(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_ff=11008)
    model = train_flops(cfg, batch=1, seq_len=2048)
    head = 3 * 2 * 4096 * 32000 * 2048
    assert remat_flops(cfg, 1, 2048) == 0.0  # no remat
    full = remat_flops(cfg.replace(remat=True, remat_policy="full"), 1, 2048)
    # full remat recomputes every block's forward pass: a third of the model FLOPs, the head aside
    assert full == pytest.approx((model - head) / 3, rel=1e-6)
    by_policy = {p: remat_flops(cfg.replace(remat=True, remat_policy=p), 1, 2048) for p in REMAT_POLICIES}
    assert by_policy["none"] == by_policy["save_dots"] == 0.0
    assert 0 < by_policy["save_dot_except_mlpwi"] < by_policy["save_qkv_proj"] < full
    est = roofline(model, 0.0, CHIPS["v5e"], full)
    assert est["step_s"] == pytest.approx((model + full) / 197e12)
    assert est["mfu"] == pytest.approx(model / (model + full)) and est["mfu"] < 0.77


def test_a_step_the_compiler_refused_reports_why_and_no_sizes():
    from jaxslim.aot.compile import AotReport

    sizes = ("arguments", "outputs", "aliased", "temporaries", "generated_code", "total")
    message = "RESOURCE_EXHAUSTED: Ran out of memory on HBM, ... (16.30G) exceeds available HBM (15.75G)."
    report = AotReport(
        topology="v5e:16x16",
        chips=256,
        mesh={"data": 16, "fsdp": 16, "context": 1, "tensor": 1, "expert": 1},
        batch=1024,
        seq_len=2048,
        hbm_bytes=16 * 2**30,
        memory={**dict.fromkeys(sizes, 0), "error": message},
        fits=False,
        compile_s=1.6,
        flops_per_step=8.65e16,
        collectives={},
        weight_sized_all_reduces=[],
    )
    text = report.format()
    assert "did not compile" in text and "DOES NOT FIT" in text and message in text
    assert "0.00 GiB" not in text and "roofline" not in text


def test_group_size_of_mesh_groups_with_a_device_order():
    # a mesh axis over a subset of a 16 x 16 mesh whose devices the compiler lists transposed
    hlo = """\
HloModule jit_step

ENTRY %main (w: bf16[16,128]) -> bf16[256,128] {
  %w = bf16[16,128]{1,0} parameter(0)
  ROOT %ag = bf16[256,128]{1,0} all-gather(%w), channel_id=84, replica_groups=mesh['axis_0'=16,'axis_1'=1,'axis_2'=16], device_ids=([16,16]T(1,0)) {'axis_0'}, dimensions={0}, use_global_device_ids=true
}
"""
    (found,) = collectives(hlo)
    assert (found.kind, found.group, found.shape) == ("all-gather", 16, (256, 128))
    assert found.sent_bytes == 256 * 128 * 2 * 15 / 16
