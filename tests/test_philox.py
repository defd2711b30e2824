"""The torch implementation of the noise stream against draws made by Triton itself."""

import struct

import pytest
import torch
from scipy import stats

from anoise.philox import noise_like, philox_normal, philox_normal4, philox_uniform4, philox_words


def _f32_hex(values):
    return [format(struct.unpack("<I", struct.pack("<f", v))[0], "08x") for v in values]


def test_words_bit_exact(philox4_vectors):
    for case in philox4_vectors:
        groups = torch.tensor(case["groups"], dtype=torch.int64)
        words = torch.stack(philox_words(case["seed"], groups), dim=1)
        assert words.tolist() == case["words"], f"seed {case['seed']}"


def test_uniforms_bit_exact(philox4_vectors):
    for case in philox4_vectors:
        groups = torch.tensor(case["groups"], dtype=torch.int64)
        rand4 = philox_uniform4(case["seed"], groups)
        assert [_f32_hex(row) for row in rand4.tolist()] == case["rand4_f32_hex"]


def test_normals_within_1e_5(philox4_vectors):
    for case in philox4_vectors:
        groups = torch.tensor(case["groups"], dtype=torch.int64)
        expected = torch.tensor(case["randn4"], dtype=torch.float64)
        actual = philox_normal4(case["seed"], groups).double()
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_element_i_draws_component_i_and_3_of_group_i_shr_2(philox4_vectors):
    for case in philox4_vectors:
        first = torch.tensor(case["element_indices_first"], dtype=torch.int64)
        expected = torch.tensor(case["randn4"], dtype=torch.float64)
        for k in range(4):
            actual = philox_normal(case["seed"], first + k).double()
            torch.testing.assert_close(actual, expected[:, k], atol=1e-5, rtol=1e-5)


def test_component_0_is_the_earlier_stream(philox_vectors):
    """``randn4x(seed, j)[0] == randn(seed, j)``: the stream-1 vectors still hold for it."""
    for case in philox_vectors:
        offsets = torch.tensor(case["offsets"], dtype=torch.int64)
        words = torch.stack(philox_words(case["seed"], offsets), dim=1)
        assert words.tolist() == case["words"], f"seed {case['seed']}"
        rand = philox_uniform4(case["seed"], offsets)[:, 0]
        assert _f32_hex(rand.tolist()) == case["rand_f32_hex"]
        expected = torch.tensor(case["randn"], dtype=torch.float64)
        actual = philox_normal4(case["seed"], offsets)[:, 0].double()
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_vectors_cover_indices_past_2_pow_32(philox4_vectors):
    assert any(g >= 2**32 for case in philox4_vectors for g in case["groups"])
    assert any(i >= 2**61 for case in philox4_vectors for i in case["element_indices_first"])
    assert any(case["seed"] >= 2**32 for case in philox4_vectors)


def test_noise_is_standard_normal():
    eps = noise_like(torch.empty(200_000), seed=7).double()
    assert abs(eps.mean().item()) < 0.01
    assert abs(eps.std().item() - 1) < 0.01
    assert stats.kstest(eps.numpy(), "norm").pvalue > 1e-3
    # The four components of a group are independent normals.
    by_component = eps.view(-1, 4)
    corr = torch.corrcoef(by_component.T)
    assert (corr - torch.eye(4, dtype=corr.dtype)).abs().max() < 0.02
    for k in range(4):
        assert stats.kstest(by_component[:, k].numpy(), "norm").pvalue > 1e-3


def test_noise_follows_logical_index_not_memory_layout():
    x = torch.empty(2, 3, 4, 5)
    chunked = noise_like(x, seed=11, chunk=7)  # chunks that split groups
    flat = philox_normal(11, torch.arange(x.numel()))
    assert torch.equal(chunked.flatten(), flat)
    cl = x.to(memory_format=torch.channels_last)
    assert torch.equal(noise_like(cl, seed=11), chunked)


@pytest.mark.parametrize("offset", [1, 2, 3, 2**32 - 2, 2**61 + 5])
def test_offsets_not_a_multiple_of_4(offset):
    x = torch.empty(3, 7)
    got = noise_like(x, seed=5, offset=offset).flatten()
    assert torch.equal(got, philox_normal(5, offset + torch.arange(21)))


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_seed_out_of_range(seed):
    with pytest.raises(ValueError, match="seed"):
        philox_words(seed, torch.arange(3))
