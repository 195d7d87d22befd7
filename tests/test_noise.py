"""Device noise (streamflame.model.noise): Philox4x32-10 keyed by the series' seed, a table of
normal quantiles. A series' numbers are the same bits in any batch, block or position."""
import math

import numpy as np
import pytest
import torch

from streamflame.model import noise as N


def test_philox_matches_the_random123_known_answers():
    def run(ctr, key):
        t = [torch.tensor([v], dtype=torch.int64) for v in (*ctr, *key)]
        return [int(w) for w in N.philox4x32(*t)]
    assert run((0, 0, 0, 0), (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    f = 0xFFFFFFFF
    assert run((f, f, f, f), (f, f)) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert run((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == \
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_a_series_gets_the_same_bits_in_any_batch_block_and_position(monkeypatch):
    rng = np.random.default_rng(0)
    seeds = [int(x) for x in rng.integers(0, 2**63, 40)] + [0, 1, 2**64 - 1, -5]
    shape = (7, 3, 11)                                 # 231 elements: not a multiple of 8
    alone = [N.standard_normal(N.series_keys([s]), shape)[0] for s in seeds]
    whole = N.standard_normal(N.series_keys(seeds), shape)
    for block in (1, 29, 64, 10**6):                  # counters per CPU block: 1 series .. all
        monkeypatch.setattr(N, "CPU_BLOCK", block)
        order = rng.permutation(len(seeds))
        got = N.standard_normal(N.series_keys([seeds[i] for i in order]), shape)
        for j, i in enumerate(order):
            assert torch.equal(got[j], alone[i]) and torch.equal(whole[i], alone[i]), (block, i)
    d64 = N.standard_normal(N.series_keys(seeds[:3]), shape, dtype=torch.float64)
    assert torch.equal(d64.float(), whole[:3])        # the float32 table is the float64 one, cast
    assert torch.equal(N.series_keys([-5]), N.series_keys([2**64 - 5]))


def test_seeds_and_streams_give_different_numbers_and_none_is_random():
    z = N.standard_normal(N.series_keys([0, 1, 2**32, None, None]), (100, 2, 48))
    flat = z.reshape(5, -1)
    for a in range(5):
        for b in range(a + 1, 5):
            assert (flat[a] == flat[b]).float().mean() < 0.01, (a, b)
    other = N.standard_normal(N.series_keys([0]), (100, 2, 48), stream=1)
    assert (other.reshape(-1) == flat[0]).float().mean() < 0.01
    with pytest.raises(TypeError, match="integer or None"):
        N.series_keys(["7"])
    with pytest.raises(TypeError, match="integer or None"):
        N.series_keys([1.5])


def test_the_draws_are_standard_normal():
    t = N.normal_table("cpu", torch.float64)
    assert t.shape == (2**16,) and torch.equal(t, -t.flip(0)) and bool((t.diff() > 0).all())
    z = N.standard_normal(N.series_keys(list(range(64))), (128, 128), dtype=torch.float64).reshape(-1)
    n = z.numel()                                                  # 1,048,576 draws
    m, v = float(z.mean()), float(z.var())
    c = z - m
    skew, kurt = float((c ** 3).mean()) / v ** 1.5, float((c ** 4).mean()) / v ** 2
    se = 1 / math.sqrt(n)
    assert abs(m) < 5 * se and abs(v - 1) < 5 * math.sqrt(2) * se
    assert abs(skew) < 5 * math.sqrt(6) * se and abs(kurt - 3) < 5 * math.sqrt(24) * se
    # Kolmogorov-Smirnov distance to the normal CDF; 1.95 / sqrt(n) is the 0.1 % critical value
    x = z.sort().values
    cdf = torch.special.ndtr(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    ks = float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max())
    assert ks < 1.95 / math.sqrt(n)
    assert float(z.abs().max()) < 4.4
