"""Weak evidence is said out loud: no references, no training images, references that are training images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from _metrics_helpers import as_png, scene
from PIL import Image

from evaluator.metrics import ClipEncoder, prepare_references, prepare_training
from evaluator.metrics.evidence import NO_REFERENCES, overlap_warnings, result_notes, startup_warnings
from evaluator.metrics.memorisation import TrainingSet, thumbnails
from evaluator.metrics.sets import ReferenceSet
from evaluator.settings import settings_for, training_images
from shared.config import load_config

REPO = Path(__file__).resolve().parent.parent


def _save(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def encoder(demo_assets):
    return ClipEncoder.load("demo:tiny-clip")


def test_no_references_and_no_training_images_are_warned_about():
    warnings = startup_warnings([], [])
    assert any(w.startswith(NO_REFERENCES) and "validation_dir" in w for w in warnings)
    assert any("no training images" in w and "train_dir" in w for w in warnings)
    notes = result_notes(0, 0)
    assert notes[0].startswith("no references: clip_i, colour, cmmd not measured")
    assert result_notes(4, 8) == []


def test_a_reference_that_is_a_training_file_is_named(tmp_path):
    train = [_save(tmp_path / "train" / "10_x" / f"t{i}.png", scene(i)) for i in range(4)]
    refs = [_save(tmp_path / "refs" / "r0.png", scene(30))]
    refs.append(Path(shutil.copy(train[2], tmp_path / "refs" / "leaked.png")))
    assert startup_warnings(refs[:1], train) == []
    (warning,) = startup_warnings(refs + [tmp_path / "refs" / "missing.png"], train)
    assert "1 of 3 references are training images (same file hash)" in warning
    assert f"{refs[1]} = {train[2]}" in warning


def test_near_duplicate_references_are_named(encoder):
    train = prepare_training([scene(i) for i in range(4)], ["10_x/t0.png", "10_x/t1.png", "10_x/t2.png",
                                                            "10_x/t3.png"], encoder)
    rng = np.random.default_rng(0)
    reencoded = as_png(scene(1) + rng.normal(0, 3 / 255, (64, 64, 3)))  # re-saved, not byte-identical
    refs = prepare_references([scene(30), reencoded], encoder, ["r0.png", "r1.png"])
    (warning,) = overlap_warnings(refs, train, encoder.name)
    assert "1 of 2 references are near-duplicates of training images: r1.png ~ 10_x/t1.png" in warning
    assert overlap_warnings(prepare_references([scene(30)], encoder, ["r0.png"]), train, encoder.name) == []
    assert overlap_warnings(None, train) == [] and overlap_warnings(refs, None) == []


def test_clip_near_duplicates_count_only_with_a_trained_encoder():
    """Same picture recropped: pixels differ, a real CLIP model puts the two at cosine >= 0.96."""
    e = np.eye(4, dtype=np.float32)
    close = np.array([[0.97, 0.2431, 0, 0]], np.float32)  # cosine 0.97 with e[0]
    refs = ReferenceSet([scene(9)], close, np.zeros((1, 3)), np.zeros(3), {}, None, names=["r.png"],
                        thumbnails=thumbnails([scene(9)]))
    train = TrainingSet(["t0.png", "t1.png"], e[:2], thumbnails([scene(0), scene(1)]))
    assert "r.png ~ t0.png" in overlap_warnings(refs, train, "ViT-B-32/laion2b_s34b_b79k")[0]
    assert overlap_warnings(refs, train, "demo:tiny-clip") == []  # random weights: cosines mean nothing


def test_settings_list_the_training_images(demo_assets):
    config = load_config(REPO / "configs" / "demo.toml")
    images = training_images(config)
    assert len(images) == 8 and all(p.suffix == ".png" and "_circle" in p.parent.name or "_square" in p.parent.name
                                    for p in images)
    assert settings_for(config).training == tuple(images)
    none = config.model_copy(update={"dataset": config.dataset.model_copy(update={"train_dir": None})})
    assert training_images(none) == []


def test_a_trial_without_references_carries_the_note(tmp_path, demo_assets):
    from evaluator.scoring import TrialContext
    from shared.trial import Trial

    config = load_config(REPO / "configs" / "demo.toml")
    config = config.model_copy(update={
        "dataset": config.dataset.model_copy(update={"validation_dir": None}),
        "evaluation": config.evaluation.model_copy(update={"references_dir": None, "prompts": ["a red circle"]})})
    settings = settings_for(config)
    assert settings.references == [] and len(settings.training) == 8
    ctx = TrialContext(Trial(tmp_path / "trial_0001"), settings)
    assert ctx.notes == [result_notes(0, 8)[0]] and ctx.notes[0].startswith(NO_REFERENCES)
    assert startup_warnings(settings.references, settings.training)[0].startswith(NO_REFERENCES)
