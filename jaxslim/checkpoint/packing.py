"""Bit and byte layouts of compressed tensors: bit planes of codes, byte planes of floats, checksums.

All functions are elementwise or act along the last axis only, so under ``jax.jit`` an array keeps
the sharding of its other axes (and of the last one when each shard's length is a multiple of 8).

- :func:`pack_codes` stores ``bits``-bit codes as ``bits`` planes of one bit per element, eight
  elements per byte along the last axis. Code 0 (an exact zero) is a 0 bit in every plane, so the
  planes of a sparse tensor are long runs of zero bytes for zstd.
- :func:`byte_planes` splits floats into their bytes, one plane per byte position, so the sign and
  exponent bytes (which change little between checkpoints) sit together.
- :func:`checksum` is a position-weighted sum modulo 2**32: exact integer arithmetic, so the same
  value on one device or over shards, and any single changed bit changes it.

Example:
    >>> import jax.numpy as jnp
    >>> codes = jnp.array([[0, 3, 1, 2, 0, 0, 0, 0, 1]], jnp.uint8)
    >>> packed = pack_codes(codes, 2)
    >>> packed.shape
    (2, 1, 2)
    >>> bool((unpack_codes(packed, 2, 9) == codes).all())
    True
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def pack_codes(codes: jax.Array, bits: int) -> jax.Array:
    """``bits`` bit planes of integer codes, packed eight per byte along the last axis.

    Args:
        codes: unsigned integer codes below ``2**bits``, at least one dimension.
        bits: bits per code.

    Returns:
        uint8 of shape ``(bits, *codes.shape[:-1], ceil(codes.shape[-1] / 8))``.
    """
    codes = codes.astype(jnp.uint8)
    planes = jnp.stack([(codes >> i) & jnp.uint8(1) for i in range(bits)])
    return jnp.packbits(planes, axis=-1)


def unpack_codes(packed: jax.Array, bits: int, length: int) -> jax.Array:
    """The codes of :func:`pack_codes` (uint8, last axis of ``length``)."""
    planes = jnp.unpackbits(packed, axis=-1, count=length)
    out = jnp.zeros(planes.shape[1:], jnp.uint8)
    for i in range(bits):
        out = out | (planes[i] << i)
    return out


def as_bits(x: jax.Array) -> jax.Array:
    """The raw bits of a float array as an unsigned integer array of the same width."""
    return lax.bitcast_convert_type(x, _UINT[np.dtype(x.dtype).itemsize])


def from_bits(u: jax.Array, dtype) -> jax.Array:
    """Inverse of :func:`as_bits`."""
    return lax.bitcast_convert_type(u, dtype)


def byte_planes(u: jax.Array) -> jax.Array:
    """Bytes of an unsigned integer array, one plane per byte position: ``(itemsize, *shape)`` uint8."""
    if u.dtype == jnp.uint8:
        return u[None]
    return jnp.moveaxis(lax.bitcast_convert_type(u, jnp.uint8), -1, 0)


def from_byte_planes(planes: jax.Array, dtype) -> jax.Array:
    """Inverse of :func:`byte_planes` (``dtype``: the unsigned integer type)."""
    if np.dtype(dtype).itemsize == 1:
        return planes[0].astype(dtype)
    return lax.bitcast_convert_type(jnp.moveaxis(planes, 0, -1), dtype)


def checksum(x: jax.Array) -> jax.Array:
    """uint32 sum of every element's bits times an odd weight from its position, modulo 2**32."""
    if x.dtype == jnp.bool_:
        u = x.astype(jnp.uint32)
    elif np.dtype(x.dtype).itemsize == 8:
        u = lax.bitcast_convert_type(x, jnp.uint32).sum(axis=-1, dtype=jnp.uint32)
    elif jnp.issubdtype(x.dtype, jnp.floating) or np.dtype(x.dtype).itemsize == 4:
        u = as_bits(x).astype(jnp.uint32)
    else:
        u = x.astype(jnp.uint32)
    if u.ndim == 0:
        return u * jnp.asarray(2654435761, jnp.uint32)
    index = jnp.zeros(u.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(u.ndim)):
        index = index + lax.broadcasted_iota(jnp.uint32, u.shape, axis) * jnp.asarray(
            stride % (1 << 32), jnp.uint32
        )
        stride *= u.shape[axis]
    weight = (
        index * jnp.asarray(2654435761, jnp.uint32) + jnp.asarray(0x9E3779B1, jnp.uint32)
    ) | jnp.asarray(1, jnp.uint32)
    return jnp.sum(u * weight, dtype=jnp.uint32)
