"""Counter-based random numbers: a cell's draws depend on its seed and a counter alone.

Every stream (data order, flips, dropout masks) is a hash of (key, index), so the same
cell gets the same numbers alone or fused with others, on any device, in any order;
the integer arithmetic is exact, so the draws are bitwise equal on CPU and GPU.
The hash is murmur3's 32-bit finaliser, a bijection with full avalanche.
"""

from __future__ import annotations

import functools

import torch

M32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9

# stream numbers: part of every key, so streams never share draws
INIT, ORDER, FLIP, DROPOUT, TORCH = 1, 2, 3, 4, 5


def fmix(h):
    """murmur3 fmix32 on a Python int or an int64 tensor holding values < 2**32."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & M32  # int64 wraps on overflow; the low 32 bits stay exact
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def key(*parts):
    """Fold ints (or int64 tensors, broadcast) into one 32-bit key."""
    h = 0
    for p in parts:
        h = fmix((h + (p & M32) * GOLDEN + GOLDEN) & M32)
    return h


@functools.lru_cache(maxsize=16)
def _counters(n: int, device: torch.device) -> torch.Tensor:
    return fmix(torch.arange(n, dtype=torch.int64, device=device))


def bits(k, n: int, device) -> torch.Tensor:
    """n hashed 32-bit values for key k (an int, or an int64 tensor of shape [G, 1])."""
    if torch.compiler.is_compiling():  # traced into the graph, where the hash fuses with its use
        return fmix(fmix(torch.arange(n, dtype=torch.int64, device=device)) ^ k)
    return fmix(_counters(n, torch.device(device)) ^ k)


def uniform24(k, n: int, device) -> torch.Tensor:
    """n ints uniform on [0, 2**24): compare with round(p * 2**24) for a Bernoulli(p)."""
    return bits(k, n, device) >> 8


def threshold(p: float) -> int:
    return round(p * (1 << 24))


def permutation(k, n: int, device) -> torch.Tensor:
    """A permutation of range(n): bits() is a bijection of the counter, so no ties."""
    return torch.argsort(bits(k, n, device), dim=-1)
