"""Growth operators: wider and deeper models that start from a smaller one's function."""

from jaxslim.grow.depth import deepen_plan, grow_depth
from jaxslim.grow.width import block_diagonal, grow_width, widen_config

__all__ = ["block_diagonal", "deepen_plan", "grow_depth", "grow_width", "widen_config"]
