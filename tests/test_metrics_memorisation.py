"""Memorisation against the training images and the references: known answers with synthetic images and
the tiny demo CLIP. A checkpoint that copies must rank below the baseline and below sound checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
from _metrics_helpers import as_png, hue_shift, scene

from evaluator.metrics import ClipEncoder, compute_metrics, prepare_references, prepare_samples, prepare_training
from evaluator.metrics.compute import sample_copies
from evaluator.metrics.memorisation import copy_scores, near_copies, thumbnails

PROMPT = "a red circle on a blue background, sks style"
N = 8


@pytest.fixture(scope="module")
def encoder(demo_assets):
    return ClipEncoder.load("demo:tiny-clip")


@pytest.fixture(scope="module")
def training(encoder):
    images = [scene(i) for i in range(N)]
    return prepare_training(images, [f"10_subject/img_{i}.png" for i in range(N)], encoder)


@pytest.fixture(scope="module")
def refs(encoder):
    images = [scene(i) for i in range(20, 24)]
    return prepare_references(images, encoder, [f"ref_{i}.png" for i in range(4)])


def _samples(images, encoder):
    return prepare_samples(images, [PROMPT] * len(images), list(range(len(images))), encoder)


def _score(images, encoder, refs, training, baseline=None):
    s = _samples(images, encoder)
    return compute_metrics(s, refs, baseline=baseline, training=training), sample_copies(s, refs, training)


@pytest.fixture(scope="module")
def baseline(encoder, refs, training):
    m, copies = _score([scene(i) for i in range(40, 40 + N)], encoder, refs, training)
    assert m.copy_rate == 0 and copies == [None] * N
    return m


@pytest.fixture(scope="module")
def sound(encoder, refs, training):
    m, _ = _score([scene(i) for i in range(50, 50 + N)], encoder, refs, training)
    assert m.copy_rate == 0
    return m


def test_copies_of_training_images_rank_below_the_baseline(encoder, refs, training, baseline):
    train_images = [scene(i) for i in range(N)]
    m, copies = _score(train_images, encoder, refs, training)
    assert m.copy_rate == 1.0 and m.max_train_sim == pytest.approx(1.0, abs=1e-5)
    assert copies == [f"training image 10_subject/img_{i}.png" for i in range(N)]
    assert m.score < 0 < baseline.score  # every sample lost, minus the CLIP near-duplicate penalty


@pytest.mark.parametrize("change", ["png noise", "colour cast", "one copy of eight"])
def test_near_copies_still_count(encoder, refs, training, baseline, change):
    rng = np.random.default_rng(0)
    sound = [scene(i) for i in range(50, 50 + N)]
    if change == "png noise":
        images = [as_png(im + rng.normal(0, 2 / 255, im.shape)) for im in (scene(i) for i in range(N))]
        expect = 1.0
    elif change == "colour cast":
        images = [as_png(hue_shift(scene(i), 0.01) * 0.97) for i in range(N)]
        expect = 1.0
    else:
        images = sound[:-1] + [scene(3)]
        expect = 1 / N
    m, copies = _score(images, encoder, refs, training)
    assert m.copy_rate == pytest.approx(expect)
    assert m.score < baseline.score, "a checkpoint that reproduces training images must not beat the base model"
    clean, _ = _score(sound, encoder, refs, training)
    assert m.score < clean.score


def test_copies_of_the_references_do_not_beat_a_sound_checkpoint(encoder, refs, training, sound):
    m, copies = _score(refs.images * 2, encoder, refs, training)
    assert m.copy_rate == 1.0 and copies[0] == "reference ref_0.png"
    assert m.clip_i > sound.clip_i and m.color_swd_lab < sound.color_swd_lab  # what used to win: 0.654 > 0.60
    assert m.score < sound.score


def test_new_pictures_of_the_subject_are_not_copies(encoder, refs, training):
    recoloured, mirrored = [hue_shift(scene(i), 0.3) for i in range(4)], [scene(i)[:, ::-1] for i in range(4)]
    images = recoloured + mirrored
    m, copies = _score(images, encoder, refs, training)
    assert m.copy_rate == 0.0 and copies == [None] * 8
    assert m.max_train_sim is not None and m.max_train_sim < 1 - 1e-4


def test_failed_samples_are_not_copies(encoder, refs, training):
    black = np.zeros((64, 64, 3), np.float32)
    m, copies = _score([black, scene(0)], encoder, refs, training)
    assert m.failure_rate == 0.5 and m.copy_rate == 0.5 and copies == [None, "training image 10_subject/img_0.png"]
    assert m.score < 0.01


def test_copy_test_known_answers():
    a = thumbnails([scene(1), scene(2), np.full((64, 64, 3), 0.5, np.float32)])
    hits, mad = copy_scores(a, a)
    assert hits.diagonal().all() and not hits[0, 1] and mad[0, 0] == 0 and mad[0, 1] > 0.05
    different_size = thumbnails([np.kron(scene(1), np.ones((2, 2, 1)))])  # the same picture at 128 px
    assert copy_scores(different_size, a[:1])[0][0, 0]
    assert near_copies([a[1], None], [("training image", a, ["x", "y", "z"])]) == ["training image y", None]
    assert near_copies([a[0]], []) == [None]


def test_without_references_or_training_images_nothing_is_measured(encoder):
    m = compute_metrics(_samples([scene(i) for i in range(3)], encoder), None)
    assert m.copy_rate is None and m.max_train_sim is None and m.max_ref_sim is None
