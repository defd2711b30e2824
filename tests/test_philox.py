"""The torch implementation of the noise stream against draws made by Triton itself."""

import struct

import pytest
import torch
from scipy import stats

from anoise.philox import noise_like, philox_normal, philox_uniform, philox_words


def _f32_hex(values):
    return [format(struct.unpack("<I", struct.pack("<f", v))[0], "08x") for v in values]


def test_words_bit_exact(philox_vectors):
    for case in philox_vectors:
        offsets = torch.tensor(case["offsets"], dtype=torch.int64)
        words = torch.stack(philox_words(case["seed"], offsets), dim=1)
        assert words.tolist() == case["words"], f"seed {case['seed']}"


def test_uniforms_bit_exact(philox_vectors):
    for case in philox_vectors:
        offsets = torch.tensor(case["offsets"], dtype=torch.int64)
        assert _f32_hex(philox_uniform(case["seed"], offsets).tolist()) == case["rand_f32_hex"]


def test_normals_within_1e_5(philox_vectors):
    for case in philox_vectors:
        offsets = torch.tensor(case["offsets"], dtype=torch.int64)
        expected = torch.tensor(case["randn"], dtype=torch.float64)
        actual = philox_normal(case["seed"], offsets).double()
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_vectors_cover_offsets_past_2_pow_32(philox_vectors):
    assert any(o >= 2**32 for case in philox_vectors for o in case["offsets"])
    assert any(case["seed"] >= 2**32 for case in philox_vectors)


def test_noise_is_standard_normal():
    eps = noise_like(torch.empty(200_000), seed=7).double()
    assert abs(eps.mean().item()) < 0.01
    assert abs(eps.std().item() - 1) < 0.01
    assert stats.kstest(eps.numpy(), "norm").pvalue > 1e-3


def test_noise_follows_logical_index_not_memory_layout():
    x = torch.empty(2, 3, 4, 5)
    chunked = noise_like(x, seed=11, chunk=7)
    flat = philox_normal(11, torch.arange(x.numel()))
    assert torch.equal(chunked.flatten(), flat)
    cl = x.to(memory_format=torch.channels_last)
    assert torch.equal(noise_like(cl, seed=11), chunked)


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_seed_out_of_range(seed):
    with pytest.raises(ValueError, match="seed"):
        philox_words(seed, torch.arange(3))
