"""Remat policies by name: each gives the gradient of the model without rematerialisation, keeps
what it names (fewer recomputed matmuls than ``full``), and a wrong name says which exist."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxslim.config import REMAT_POLICIES, ModelConfig
from jaxslim.models import Transformer


def _grads(cfg: ModelConfig):
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, cfg.vocab_size)

    def loss(p):
        logits = nnx.merge(graphdef, p, rest)(tokens[:, :-1]).logits
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    return jax.jit(jax.grad(loss))(params), jax.jit(jax.grad(loss)).lower(params).as_text()


# "none" and "save_qkv_out_proj" are the everything / union cases of the ones run here; the host
# offload policies run on CPU too (its devices have a pinned_host memory)
CASES = [
    ("save_dots", True),
    ("dots_with_no_batch_dims", True),
    ("save_qkv_proj", True),
    ("save_out_proj", False),
    ("save_dot_except_mlpwi", True),
    ("offload", True),
    ("qkv_proj_offloaded", False),
]


def test_every_policy_gives_the_gradient_without_remat():
    base = ModelConfig.llama(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
    assert {p for p, _ in CASES} | {"full", "none", "save_qkv_out_proj"} == set(REMAT_POLICIES)
    want = {scan: _grads(base.replace(scan_layers=scan))[0] for scan in (True, False)}
    for policy, scan in CASES:
        got, _ = _grads(base.replace(remat=True, remat_policy=policy, scan_layers=scan))
        for a, b in zip(jax.tree.leaves(want[scan]), jax.tree.leaves(got), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=policy)


def test_policies_name_what_they_keep():
    base = ModelConfig.llama(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, remat=True)
    # a policy that saves the q/k/v projections recomputes fewer matmuls than full remat
    policies = ("full", "save_qkv_proj", "save_dot_except_mlpwi", "none")
    dots = {p: _grads(base.replace(remat_policy=p))[1].count("dot_general") for p in policies}
    assert dots["save_qkv_proj"] < dots["full"]
    # keeping the MLP's output too spares its recomputation, but the MLP's input projections stay
    assert dots["none"] < dots["save_dot_except_mlpwi"] < dots["save_qkv_proj"]


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="remat_policy must be one of"):
        ModelConfig.llama(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, remat_policy="most")
