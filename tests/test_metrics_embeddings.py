"""CLIP-space metrics: known answers on hand-made embeddings, and on real tiny-CLIP embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluator.metrics import ClipEncoder
from evaluator.metrics.embeddings import clip_i, clip_t, cmmd, cmmd_floor, diversity, max_ref_sim, ref_self_sim
from _metrics_helpers import scene


def _unit(rows) -> np.ndarray:
    a = np.asarray(rows, np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_cosine_metrics_on_hand_made_embeddings():
    x, y, z = _unit([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    assert clip_t(np.stack([x, y]), np.stack([x, z])) == pytest.approx((1 + math.sqrt(0.5)) / 2)
    assert clip_i(np.stack([x, y]), np.stack([x])) == pytest.approx(0.5)
    assert max_ref_sim(np.stack([y, z]), np.stack([x])) == pytest.approx(math.sqrt(0.5))
    assert diversity(np.stack([x, x, x])) == pytest.approx(0.0)
    assert diversity(np.stack([x, y])) == pytest.approx(1.0)
    assert diversity(np.stack([x])) is None and ref_self_sim(np.stack([x])) is None
    assert ref_self_sim(np.stack([x, y, z])) == pytest.approx((0 + 2 * math.sqrt(0.5)) / 3)


def test_cmmd_known_value():
    """x = {0, 0}, y = {d, d}: the paper's MMD^2 = 1 + 1 - 2 exp(-d^2 / (2 * 10^2)), times 1000."""
    d = 3.0
    x, y = np.zeros((2, 1)), np.full((2, 1), d)
    assert cmmd(x, y) == pytest.approx(1000 * (2 - 2 * math.exp(-d * d / 200)))
    assert cmmd(x, x) == 0.0
    assert cmmd(x[:1], y) is None and cmmd(x, y[:1]) is None
    # full kernel means, diagonals included: {0, d} against {0, 0} = (2 + 2e)/4 + 1 - 2 (2 + 2e)/4, e = k(0, d)
    e = math.exp(-d * d / 200)
    assert cmmd(np.array([[0.0], [d]]), x) == pytest.approx(1000 * ((2 + 2 * e) / 4 + 1 - (2 + 2 * e) / 2))


def test_cmmd_is_zero_for_identical_sets_and_rises_with_distance():
    rng = np.random.default_rng(1)
    a = _unit(rng.normal(size=(60, 16)))
    assert cmmd(a, a) == 0.0 and cmmd(a[:8], a[:8]) == 0.0  # identical: exactly 0 (was -3.16 unbiased)
    perturbed = [cmmd(a, _unit(a + rng.normal(size=a.shape) * s)) for s in (0.01, 0.1, 0.3, 1.0)]
    assert all(v >= 0 for v in perturbed) and perturbed == sorted(perturbed) and perturbed[0] < 1e-2
    shifts = [cmmd(a, _unit(rng.normal(size=(60, 16)) + np.eye(16)[0] * s)) for s in (0.5, 1.5, 4.0)]
    assert shifts[0] < shifts[1] < shifts[2]
    # never negative, for any sets, and symmetric
    for _ in range(20):
        x, y = _unit(rng.normal(size=(8, 16))), _unit(rng.normal(size=(5, 16)))
        assert cmmd(x, y) >= 0 and cmmd(x, y) == pytest.approx(cmmd(y, x))


def test_cmmd_small_set_floor_matches_the_documented_formula():
    """Two independent draws from one distribution give about 1000 (1/m + 1/n)(1 - mean k): read small-set
    CMMD against that floor (docs/metrics.md)."""
    rng = np.random.default_rng(2)
    pool = _unit(rng.normal(size=(4000, 16)))
    for m, n in ((8, 4), (8, 8), (32, 32)):
        vals = [cmmd(pool[rng.choice(4000, m, replace=False)], pool[rng.choice(4000, n, replace=False)])
                for _ in range(200)]
        floor = cmmd_floor(m, n, mean_cosine=0.0)
        assert np.mean(vals) == pytest.approx(floor, rel=0.1), (m, n)


@pytest.fixture(scope="module")
def encoder(demo_assets):
    return ClipEncoder.load("demo:tiny-clip")


def test_real_embeddings_identical_images(encoder):
    emb = encoder.encode_images([scene(5)] * 4)
    assert clip_i(emb, emb) == pytest.approx(1.0, abs=1e-5)
    assert diversity(emb) == pytest.approx(0.0, abs=1e-5)
    assert ref_self_sim(emb) == pytest.approx(1.0, abs=1e-5)
    assert max_ref_sim(emb, emb) == pytest.approx(1.0, abs=1e-5)
    assert cmmd(emb, emb) == 0.0


def test_real_embeddings_distinct_images(encoder):
    emb = encoder.encode_images([scene(i) for i in range(6)])
    refs, samples = emb[:3], emb[3:]
    assert diversity(emb) > 1e-4
    assert max_ref_sim(samples, refs) < 1 - 1e-5
    copy = np.concatenate([samples, refs[1:2]])
    assert max_ref_sim(copy, refs) == pytest.approx(1.0, abs=1e-5)
    # clip_i of a set against itself = (1 + (n-1) ref_self_sim) / n
    assert clip_i(refs, refs) == pytest.approx((1 + 2 * ref_self_sim(refs)) / 3, abs=1e-6)
