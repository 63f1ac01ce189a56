"""Counter-based random numbers: murmur3 values, int and tensor paths, streams, permutations."""

import torch

from ablate import rng


def test_fmix_matches_murmur3_reference_values():
    # murmur3 fmix32 by hand from its published constants; 0 is its fixed point
    assert rng.fmix(0) == 0
    h = 1
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    assert rng.fmix(1) == h == 0x514E28B7


def test_tensor_and_int_paths_agree():
    xs = torch.tensor([0, 1, 2, 12345, 0xFFFFFFFF], dtype=torch.int64)
    assert rng.fmix(xs).tolist() == [rng.fmix(int(x)) for x in xs]
    seeds = torch.tensor([[0], [7]])
    assert rng.key(seeds, rng.ORDER, 3).flatten().tolist() == [
        rng.key(0, rng.ORDER, 3),
        rng.key(7, rng.ORDER, 3),
    ]


def test_batched_keys_give_each_row_its_own_stream():
    keys = torch.tensor([[rng.key(1)], [rng.key(2)]])
    both = rng.bits(keys, 100, "cpu")
    assert torch.equal(both[0], rng.bits(rng.key(1), 100, "cpu"))
    assert torch.equal(both[1], rng.bits(rng.key(2), 100, "cpu"))
    assert not torch.equal(both[0], both[1])


def test_permutation_is_a_permutation_and_depends_on_the_key():
    p = rng.permutation(rng.key(0, rng.ORDER, 1), 1000, "cpu")
    assert sorted(p.tolist()) == list(range(1000))
    assert not torch.equal(p, rng.permutation(rng.key(0, rng.ORDER, 2), 1000, "cpu"))
    assert torch.equal(p, rng.permutation(rng.key(0, rng.ORDER, 1), 1000, "cpu"))


def test_uniform24_is_uniform_enough_for_masks():
    u = rng.uniform24(rng.key(42), 200_000, "cpu").double() / (1 << 24)
    assert abs(u.mean().item() - 0.5) < 0.003  # sd of the mean: 0.29 / sqrt(2e5) = 0.00065
    keep = (rng.uniform24(rng.key(43), 200_000, "cpu") >= rng.threshold(0.2)).double().mean().item()
    assert abs(keep - 0.8) < 0.003
    hist = torch.histc(u.float(), bins=10, min=0, max=1)
    assert (hist - 20_000).abs().max().item() < 600  # ~4 sd of a bin count


def test_uniform24_in_int32_is_bitwise_the_int64_hash_shifted():
    # keys on both sides of 2**31, where int32 holds the bits as negative numbers
    keys = torch.tensor([[0], [1], [2**31 - 1], [2**31], [2**32 - 1], [rng.key(7, rng.DROPOUT)]])
    fast = rng.uniform24(keys, 5000, "cpu")
    assert fast.dtype == torch.int32
    assert torch.equal(fast.long(), rng.bits(keys, 5000, "cpu") >> 8)
    assert torch.equal(
        rng.uniform24(rng.key(3), 7, "cpu").long(), rng.bits(rng.key(3), 7, "cpu") >> 8
    )
    # fmix32 on the int32 bits is fmix on their unsigned value, at the signed extremes too
    xs = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 0x9E3779B9], dtype=torch.int64)
    as_int32 = torch.where(xs >= 2**31, xs - 2**32, xs).to(torch.int32)
    assert (rng.fmix32(as_int32).long() % 2**32).tolist() == [rng.fmix(int(x)) for x in xs]
