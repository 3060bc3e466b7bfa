"""compute_metrics end to end on synthetic images with the real tiny CLIP encoder; the score; load_image."""

from __future__ import annotations

import numpy as np
import pytest
from _metrics_helpers import as_png, hue_shift, nan_image, scene

from evaluator.metrics import (
    ClipEncoder,
    DinoEncoder,
    composite_score,
    compute_metrics,
    load_image,
    prepare_references,
    prepare_samples,
    prepare_training,
)
from shared.errors import EpochscopeError
from shared.records import Metrics

PROMPT = "a red circle on a blue background, sks style"
REF_FIELDS = ("clip_i", "ref_self_sim", "max_ref_sim", "cmmd", "color_swd_lab", "color_delta_e2000_mean",
              "brightness_delta_ref", "contrast_rms_delta_ref", "saturation_delta_ref", "clipped_fraction_delta_ref")
BASE_FIELDS = ("brightness_delta_base", "contrast_rms_delta_base", "saturation_delta_base",
               "clipped_fraction_delta_base", "ssim_base")


@pytest.fixture(scope="module")
def encoder(demo_assets):
    return ClipEncoder.load("demo:tiny-clip")


@pytest.fixture(scope="module")
def dino(demo_assets):
    return DinoEncoder.load("demo:tiny-dino")


@pytest.fixture(scope="module")
def refs(encoder):
    return prepare_references([scene(i) for i in range(4)], encoder)


def _samples(images, encoder, **kw):
    return prepare_samples(images, [PROMPT] * len(images), list(range(len(images))), encoder, **kw)


def test_identical_sets_give_the_ideal_values(encoder, dino):
    same = [scene(0)] * 4
    s = _samples(same, encoder, dino=dino)
    m = compute_metrics(s, prepare_references(same, encoder, dino=dino), baseline=_samples(same, encoder),
                        previous=s, training=prepare_training(same, ["a", "b", "c", "d"], encoder, dino))
    assert all(v is not None for v in m.model_dump().values())  # every field computed
    assert m.clip_i == pytest.approx(1.0, abs=1e-5) and m.ref_self_sim == pytest.approx(1.0, abs=1e-5)
    assert m.max_ref_sim == pytest.approx(1.0, abs=1e-5) and m.diversity == pytest.approx(0.0, abs=1e-5)
    assert m.max_train_sim == pytest.approx(1.0, abs=1e-5) and m.copy_rate == 1.0
    assert m.dino == pytest.approx(1.0, abs=1e-5) and m.dino_train == pytest.approx(1.0, abs=1e-5)
    assert m.ssim_prev == pytest.approx(1.0) and m.ssim_base == pytest.approx(1.0)
    assert m.color_swd_lab == 0.0 and m.color_delta_e2000_mean == 0.0 and 0.0 <= m.cmmd < 1e-6
    for k in REF_FIELDS[6:] + BASE_FIELDS[:4]:
        assert getattr(m, k) == 0.0, k
    assert m.failure_rate == 0.0


def test_samples_equal_to_references(encoder, refs):
    m = compute_metrics(_samples(refs.images, encoder), refs)
    n = len(refs.images)
    assert m.clip_i == pytest.approx((1 + (n - 1) * m.ref_self_sim) / n, abs=1e-6)
    assert m.max_ref_sim == pytest.approx(1.0, abs=1e-5) and m.color_swd_lab == 0.0
    assert 0.0 <= m.cmmd < 1e-6  # the paper's estimator: exactly 0 for identical sets, never negative
    assert m.copy_rate == 1.0  # every sample is a reference


def test_missing_inputs_give_none(encoder, refs):
    s = _samples([scene(i) for i in range(10, 13)], encoder)
    alone = compute_metrics(s, None)
    assert all(getattr(alone, k) is None for k in REF_FIELDS + BASE_FIELDS + ("ssim_prev",))
    assert alone.clip_t is not None and alone.diversity is not None and alone.score is not None
    with_refs = compute_metrics(s, refs)
    assert all(getattr(with_refs, k) is not None for k in REF_FIELDS)
    assert with_refs.ssim_prev is None and with_refs.ssim_base is None
    one = compute_metrics(_samples([scene(10)], encoder), refs)
    assert one.diversity is None and one.cmmd is None and one.clip_i is not None


def test_a_copy_of_a_reference_raises_max_ref_sim(encoder, refs):
    others = [scene(i) for i in range(10, 14)]
    without = compute_metrics(_samples(others, encoder), refs).max_ref_sim
    with_copy = compute_metrics(_samples(others + [refs.images[2]], encoder), refs).max_ref_sim
    assert with_copy == pytest.approx(1.0, abs=1e-5) and with_copy > without + 1e-3


def test_planted_hue_shift_raises_colour_metrics(encoder, refs):
    values = [compute_metrics(_samples([hue_shift(im, s) for im in refs.images], encoder), refs)
              for s in (0.0, 0.05, 0.15, 0.3)]
    swd = [m.color_swd_lab for m in values]
    de = [m.color_delta_e2000_mean for m in values]
    assert all(a < b for a, b in zip(swd, swd[1:])) and all(a < b for a, b in zip(de, de[1:]))


def test_failed_samples_are_counted_and_excluded(encoder, refs):
    clean_images = [scene(i) for i in range(10, 13)]
    base_images = [scene(i) for i in range(20, 23)]
    clean = compute_metrics(_samples(clean_images, encoder), refs, baseline=_samples(base_images, encoder),
                            previous=_samples(base_images[::-1], encoder))
    black = np.zeros((64, 64, 3), np.float32)
    flat = np.full((64, 64, 3), 0.6, np.float32)
    dirty_images = clean_images + [nan_image(), black, flat, scene(30)]
    dirty_base = base_images + [nan_image(), black, scene(40) * 0 + 0.3, black]  # failed where samples failed
    dirty = compute_metrics(_samples(dirty_images, encoder, nsfw_flags=[False] * 6 + [True]), refs,
                            baseline=_samples(dirty_base, encoder),
                            previous=_samples(base_images[::-1] + [nan_image()] * 4, encoder))
    assert dirty.failure_rate == pytest.approx(4 / 7)
    not_measured = {"max_train_sim", "dino", "dino_train"}  # no training images, DINO off
    for k, v in clean.model_dump().items():
        if k in not_measured:
            assert v is None and getattr(dirty, k) is None, k
        elif k not in ("failure_rate", "score"):
            assert v is not None and getattr(dirty, k) == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert dirty.score < clean.score
    assert _samples(dirty_images, encoder).failures[3:] == ["nan", "black", "flat", None]


def test_all_failed(encoder, refs):
    black = np.zeros((64, 64, 3), np.float32)
    s = _samples([black, nan_image()], encoder)
    m = compute_metrics(s, refs, baseline=s, previous=s)
    assert m.failure_rate == 1.0 and m.score == -1.0
    assert all(v is None for k, v in m.model_dump().items() if k not in ("failure_rate", "score"))


def test_known_failures_from_a_saved_record(encoder):
    images = [scene(i) for i in range(3)]
    s = _samples(images, encoder, failures=[None, "nan", None])
    assert s.failures == [None, "nan", None] and len(s.embeddings) == 2 and s.by_index[1] is None


def test_metrics_from_reloaded_pngs_equal_the_in_memory_ones(tmp_path, encoder, refs):
    """After a restart the previous checkpoint is rebuilt from its PNGs: same numbers as before."""
    from PIL import Image

    prev = [as_png(hue_shift(scene(i), 0.1)) for i in range(10, 14)]
    for i, im in enumerate(prev):
        Image.fromarray((im * 255).round().astype(np.uint8)).save(tmp_path / f"sample_{i:02d}.png")
    reloaded = [load_image(tmp_path / f"sample_{i:02d}.png") for i in range(4)]
    assert all(np.array_equal(a, b) for a, b in zip(prev, reloaded))
    current = _samples([scene(i) for i in range(10, 14)], encoder)
    a = compute_metrics(current, refs, previous=_samples(prev, encoder))
    b = compute_metrics(current, refs, previous=_samples(reloaded, encoder))
    assert a == b and 0 < a.ssim_prev < 1


def test_score_prefers_the_planted_good_checkpoint(encoder, refs):
    good_images = [scene(i) for i in range(10, 18)]
    bad_images = [hue_shift(im, 0.5) for im in good_images[:5]] + [nan_image()] * 3
    good = compute_metrics(_samples(good_images, encoder), refs)
    bad = compute_metrics(_samples(bad_images, encoder), refs)
    assert bad.failure_rate == 3 / 8 and bad.color_swd_lab > good.color_swd_lab
    assert good.score > bad.score > -1.0
    assert composite_score(good) == good.score


def test_score_formula_and_its_directions():
    base = Metrics(clip_t=0.3, clip_i=0.8, color_swd_lab=5.0, diversity=0.3, failure_rate=0.0, max_ref_sim=0.9)
    quality = (0.4 * 0.65 + 0.3 * 0.9 + 0.2 * np.exp(-5 / 20) + 0.1 * 0.3) / 1.0
    assert composite_score(base) == pytest.approx(quality)

    def with_(**kw):
        return composite_score(base.model_copy(update=kw))

    assert with_(clip_t=0.35) > composite_score(base) > with_(clip_t=0.25)
    assert with_(clip_i=0.85) > composite_score(base) > with_(clip_i=0.7)
    assert with_(color_swd_lab=1.0) > composite_score(base) > with_(color_swd_lab=20.0)
    assert with_(diversity=0.4) > composite_score(base) > with_(diversity=0.1)
    assert with_(failure_rate=0.125) == pytest.approx(composite_score(base) * 0.875)
    assert with_(max_ref_sim=0.95) == composite_score(base)
    assert with_(max_ref_sim=1.0) == pytest.approx(composite_score(base) - 0.1)  # memorisation
    assert with_(max_train_sim=1.0) == pytest.approx(composite_score(base) - 0.1)  # of a training image too
    assert with_(copy_rate=0.25) == pytest.approx(composite_score(base) * 0.75)  # a copy counts as lost
    assert with_(copy_rate=0.5, failure_rate=0.5) == 0.0
    with_dino = (0.4 * 0.65 + 0.3 * 0.9 + 0.3 * 0.8 + 0.2 * np.exp(-5 / 20) + 0.1 * 0.3) / 1.3
    assert with_(dino=0.6) == pytest.approx(with_dino) and with_(dino=0.7) > with_(dino=0.6)
    no_refs = Metrics(clip_t=0.3, diversity=0.3, failure_rate=0.0)
    assert composite_score(no_refs) == pytest.approx((0.4 * 0.65 + 0.1 * 0.3) / 0.5)  # renormalised weights
    assert composite_score(Metrics(failure_rate=1.0)) == -1.0 and composite_score(Metrics()) is None
    worst = Metrics(clip_t=-1, clip_i=-1, color_swd_lab=1e9, diversity=0, failure_rate=0.99, max_ref_sim=1.0)
    best = Metrics(clip_t=1, clip_i=1, color_swd_lab=0, diversity=1, failure_rate=0, max_ref_sim=0.5)
    assert -1.0 < composite_score(worst) and composite_score(best) == pytest.approx(1.0)


def test_load_image(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    loaded = load_image(tmp_path / "rgb.png")
    assert loaded.dtype == np.float32 and loaded.shape == (40, 50, 3) and np.allclose(loaded * 255, rgb)
    rgba = np.dstack([rgb, np.full((40, 50), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(load_image(tmp_path / "rgba.png"), loaded)
    Image.fromarray(np.full((3, 3), 65535, np.uint16)).save(tmp_path / "deep.png")
    assert np.allclose(load_image(tmp_path / "deep.png"), 1.0) and load_image(tmp_path / "deep.png").shape == (3, 3, 3)

    (tmp_path / "garbage.png").write_bytes(b"not a png at all")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "rgb.png").read_bytes()[:3000])
    for name in ("garbage.png", "truncated.png", "missing.png"):
        with pytest.raises(EpochscopeError, match=name) as info:
            load_image(tmp_path / name)
        assert "\n" not in str(info.value)
