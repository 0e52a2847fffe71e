"""Growth operators: wider and deeper models, and training states, that start from a smaller one;
and upcycling, a dense model grown into a mixture of experts."""

from jaxslim.grow.depth import Deepen, deepen_plan, grow_depth
from jaxslim.grow.upcycle import upcycle
from jaxslim.grow.width import Widen, block_diagonal, grow_width, narrow_config, widen_config

__all__ = [
    "Deepen",
    "Widen",
    "block_diagonal",
    "deepen_plan",
    "grow_depth",
    "grow_width",
    "narrow_config",
    "upcycle",
    "widen_config",
]
