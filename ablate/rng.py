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


def _int32(h: torch.Tensor) -> torch.Tensor:
    """int64 values < 2**32 as int32 tensors holding the same 32 bits (two's complement)."""
    return torch.where(h >= 1 << 31, h - (1 << 32), h).to(torch.int32)


# fmix32's multipliers as int32: int32 products wrap modulo 2**32, as the hash needs
C1, C2 = 0x85EBCA6B - (1 << 32), 0xC2B2AE35 - (1 << 32)


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """fmix on int32 tensors, bit for bit: `>>` on int32 copies the sign bit, so each shift is
    masked to the logical shift's bits. int64 multiplies are not vectorised on CPUs (a dropout
    mask for 10 cells' 32 x 512 activations took 3.5 ms as int64, 0.29 ms as int32)."""
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * C1
    h = h ^ ((h >> 13) & 0x7FFFF)
    h = h * C2
    return h ^ ((h >> 16) & 0xFFFF)


@functools.lru_cache(maxsize=16)
def _counters32(n: int, device: torch.device) -> torch.Tensor:
    return _int32(_counters(n, device))


def uniform24(k, n: int, device) -> torch.Tensor:
    """n ints uniform on [0, 2**24) (int32; bits(k, n) >> 8 exactly): compare with
    round(p * 2**24) for a Bernoulli(p)."""
    k = _int32(torch.as_tensor(k, dtype=torch.int64, device=device))
    if torch.compiler.is_compiling():
        counters = _int32(fmix(torch.arange(n, dtype=torch.int64, device=device)))
    else:
        counters = _counters32(n, torch.device(device))
    return (fmix32(counters ^ k) >> 8) & 0xFFFFFF


def threshold(p: float) -> int:
    return round(p * (1 << 24))


def cutoffs(ps: list[float], device) -> torch.Tensor:
    """For above(): [len(ps), 1] cutoffs such that above(k, counters, cutoff) is
    uniform24(k) >= threshold(p) bit for bit. uniform24 is the hash's top 24 bits, so it reaches
    t exactly where the unsigned hash reaches t * 2**8; flipping the sign bit maps unsigned order
    onto int32's signed order. int64 only where p rounds to 1 (t = 2**24 has no int32 cutoff)."""
    values = [(threshold(p) << 8) - (1 << 31) for p in ps]
    dtype = torch.int32 if max(values) < 1 << 31 else torch.int64
    return torch.tensor(values, dtype=dtype, device=device).view(-1, 1)


def above(k: torch.Tensor, counters: torch.Tensor, cutoff: torch.Tensor) -> torch.Tensor:
    """uniform24(k) >= threshold(p) for the hashed counters given (counters32, or any selection
    of them) and int32 keys k, in 14 operations instead of uniform24's 18 and a comparison:
    a dropout mask or a flip from one fused draw (cutoffs gives `cutoff`)."""
    return (fmix32(counters ^ k) ^ -(1 << 31)) >= cutoff


def counters32(n: int, device) -> torch.Tensor:
    """The hashed counters 0..n-1 as int32, uniform24's and above()'s input (cached)."""
    return _counters32(n, torch.device(device))


def int32(k) -> torch.Tensor:
    """Keys (an int, or an int64 tensor of values < 2**32) as the int32 tensor above() takes."""
    return _int32(torch.as_tensor(k, dtype=torch.int64))


def permutation(k, n: int, device) -> torch.Tensor:
    """A permutation of range(n): bits() is a bijection of the counter, so no ties."""
    return torch.argsort(bits(k, n, device), dim=-1)
