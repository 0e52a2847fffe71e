"""Ahead-of-time compilation of training steps for TPU topologies, with no TPU attached.

``jaxslim-aot`` (:mod:`jaxslim.cli.aot`) compiles a preset's real train step for a pod
(``v5e-256``, ``v5p-128``, ...) with libtpu (``pip install 'jaxslim[aot]'``) and reports per-chip
HBM against the chip's, the collectives per step, the analytic FLOPs and a roofline estimate.
"""

from jaxslim.aot.compile import AotReport, build_train_step, compile_train_step, roofline, weight_sized
from jaxslim.aot.flops import matmul_params_per_token, remat_flops, train_flops
from jaxslim.aot.hlo import Collective, collectives, summarize
from jaxslim.aot.topologies import CHIPS, Chip, Topology, parse_topology, topology_devices

__all__ = [
    "CHIPS",
    "AotReport",
    "Chip",
    "Collective",
    "Topology",
    "build_train_step",
    "collectives",
    "compile_train_step",
    "matmul_params_per_token",
    "parse_topology",
    "remat_flops",
    "roofline",
    "summarize",
    "topology_devices",
    "train_flops",
    "weight_sized",
]
