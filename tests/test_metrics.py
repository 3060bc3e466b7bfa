"""Each metric on synthetic images whose answer is known, with the real (tiny) CLIP encoder."""

from __future__ import annotations

import numpy as np
import pytest

from evaluator.metrics import ClipEncoder, compute_metrics, load_image, prepare_references, prepare_samples
from evaluator.metrics.color import lab_pixels, sliced_wasserstein
from evaluator.metrics.embeddings import cmmd
from evaluator.metrics.image_stats import image_stats
from evaluator.metrics.score import composite_score
from shared.errors import EpochscopeError
from shared.records import Metrics


@pytest.fixture(scope="module")
def encoder(demo_assets):
    return ClipEncoder.load("demo:tiny-clip")


@pytest.fixture(scope="module")
def refs(demo_assets):
    return [load_image(p) for p in sorted(demo_assets.validation_dir.glob("*.png"))]


def _samples(images, encoder, nsfw=None):
    return prepare_samples(images, ["a red circle"] * len(images), list(range(len(images))), encoder, nsfw)


def hue_shift(image: np.ndarray, amount: float) -> np.ndarray:
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(image)
    hsv[..., 0] = (hsv[..., 0] + amount) % 1.0
    return hsv2rgb(hsv).astype(np.float32)


def test_identical_sets(encoder, refs):
    same = [refs[0]] * 4
    m = compute_metrics(_samples(same, encoder), prepare_references(same, encoder), baseline=_samples(same, encoder),
                        previous=_samples(same, encoder))
    assert m.clip_i == pytest.approx(1.0, abs=1e-5) and m.diversity == pytest.approx(0.0, abs=1e-5)
    assert m.ssim_prev == pytest.approx(1.0) and m.ssim_base == pytest.approx(1.0)
    assert m.color_swd_lab == pytest.approx(0.0, abs=1e-6) and m.color_delta_e2000_mean == pytest.approx(0.0, abs=1e-6)
    assert m.brightness_delta_ref == 0 and m.brightness_delta_base == 0 and m.failure_rate == 0


def test_same_set_as_references(encoder, refs):
    m = compute_metrics(_samples(refs, encoder), prepare_references(refs, encoder))
    assert m.clip_i == pytest.approx(m.ref_self_sim * (len(refs) - 1) / len(refs) + 1 / len(refs), abs=1e-5)
    assert m.max_ref_sim == pytest.approx(1.0, abs=1e-5)
    assert abs(m.cmmd) < 5  # unbiased: about 0, may dip below


def test_planted_hue_shift_raises_colour_distances(encoder, refs):
    r = prepare_references(refs, encoder)
    values = [compute_metrics(_samples([hue_shift(im, s) for im in refs], encoder), r) for s in (0.0, 0.1, 0.3)]
    swd = [m.color_swd_lab for m in values]
    de = [m.color_delta_e2000_mean for m in values]
    assert swd[0] < swd[1] < swd[2] and de[0] < de[1] < de[2]
    assert swd[0] < 1.0 and swd[2] > 10


def test_copy_of_a_reference_raises_max_ref_sim(encoder, refs):
    rng = np.random.default_rng(0)
    noise = [rng.random((64, 64, 3), dtype=np.float32) for _ in range(3)]
    r = prepare_references(refs, encoder)
    without = compute_metrics(_samples(noise, encoder), r).max_ref_sim
    with_copy = compute_metrics(_samples(noise + [refs[2]], encoder), r).max_ref_sim
    assert with_copy == pytest.approx(1.0, abs=1e-5) and with_copy > without


def test_black_and_nan_images_are_failures_and_excluded(encoder, refs):
    r = prepare_references(refs, encoder)
    clean = compute_metrics(_samples(refs[:3], encoder), r)
    nan = refs[0].copy()
    nan[10, 10] = np.nan
    black = np.zeros_like(refs[0])
    dirty = compute_metrics(_samples(refs[:3] + [nan, black], encoder), r)
    assert dirty.failure_rate == pytest.approx(2 / 5)
    assert dirty.clip_i == pytest.approx(clean.clip_i, abs=1e-6)
    assert dirty.brightness == pytest.approx(clean.brightness)
    nsfw = compute_metrics(_samples(refs[:2], encoder, nsfw=[True, False]), r)
    assert nsfw.failure_rate == 0.5
    all_failed = compute_metrics(_samples([black, black], encoder), r)
    assert all_failed.failure_rate == 1.0 and all_failed.clip_t is None and all_failed.score == 0.0


def test_image_statistics_known_values():
    img = np.full((10, 10, 3), 0.5, np.float32)
    img[:5] = 1.0
    s = image_stats(img)
    assert s["clipped_fraction"] == pytest.approx(0.5) and s["brightness"] == pytest.approx(0.75)
    assert s["contrast_rms"] == pytest.approx(0.25) and s["saturation"] == 0
    red = np.zeros((4, 4, 3), np.float32)
    red[..., 0] = 1
    assert image_stats(red)["saturation"] == 1


def test_cmmd_and_swd_grow_with_distribution_shift():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(40, 8))
    b = rng.normal(size=(40, 8))
    shifted = b + 3
    assert abs(cmmd(a, b)) < cmmd(a, shifted)
    pa = lab_pixels([rng.random((16, 16, 3), dtype=np.float32)])
    assert sliced_wasserstein(pa, pa) == 0


def test_score_orders_good_over_bad():
    good = Metrics(clip_t=0.3, clip_i=0.8, color_swd_lab=5, diversity=0.3, failure_rate=0, max_ref_sim=0.9)
    bad = Metrics(clip_t=0.1, clip_i=0.5, color_swd_lab=30, diversity=0.05, failure_rate=0.5, max_ref_sim=0.9)
    memorised = good.model_copy(update={"max_ref_sim": 1.0})
    assert composite_score(good) > composite_score(memorised) > composite_score(bad)
    assert -0.2 <= composite_score(bad) <= 1


def test_unreadable_image_names_the_file(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(b"garbage")
    with pytest.raises(EpochscopeError, match="x.png"):
        load_image(p)


def test_local_weights_file_and_missing_model(tmp_path, demo_assets, refs):
    import open_clip

    from shared.demo_assets import TINY_CLIP_NAME

    open_clip.add_model_config(demo_assets.clip_config)
    local = ClipEncoder.load(TINY_CLIP_NAME, str(demo_assets.clip_weights))
    demo = ClipEncoder.load("demo:tiny-clip")
    assert np.allclose(local.encode_images(refs[:2]), demo.encode_images(refs[:2]), atol=1e-6)
    with pytest.raises(EpochscopeError, match="cannot load CLIP model"):
        ClipEncoder.load("ViT-B-32", "laion2b_s34b_b79k")  # not cached, and no network
    with pytest.raises(EpochscopeError, match="pickle"):
        ClipEncoder.load("ViT-B-32", str(tmp_path / "weights.pt"))
