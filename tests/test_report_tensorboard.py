"""TensorBoard: a re-score (evaluator run --force) replaces the points at its step instead of adding more."""

from __future__ import annotations

import numpy as np

from evaluator.tensorboard_log import log_checkpoint, sample_grid
from shared.records import Metrics
from shared.trial import Trial


def _read(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = {tag: [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    images = {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}
    return scalars, images


def test_rescoring_a_step_replaces_its_points(tmp_path):
    trial = Trial(tmp_path / "trial_0001")
    img = [np.full((8, 8, 3), 0.5, np.float32)] * 2
    log_checkpoint(trial, 0, Metrics(score=0.5, failure_rate=0.0), img, "baseline")
    for step, score in ((4, 0.6), (8, 0.61), (12, 0.62)):
        log_checkpoint(trial, step, Metrics(score=score, failure_rate=0.0), img, "checkpoint")
    log_checkpoint(trial, 8, Metrics(score=0.7, failure_rate=0.5), img, "checkpoint", failures=[None, "noise"])
    log_checkpoint(trial, 8, Metrics(score=0.71, failure_rate=0.5), img, "checkpoint")  # twice: still one point
    scalars, images = _read(trial.logs_dir / "evaluator")
    assert scalars["eval/score"] == [(0, 0.5), (4, 0.6), (8, 0.71), (12, 0.62)]
    assert scalars["eval/failure_rate"] == [(0, 0.0), (4, 0.0), (8, 0.5), (12, 0.0)]
    assert images["samples/checkpoint"] == [4, 8, 12] and images["samples/baseline"] == [0]
    files = list((trial.logs_dir / "evaluator").glob("events.out.tfevents.*"))
    assert len(files) == 1  # rewritten as one file, in step order


def test_failed_samples_get_a_red_frame_in_the_grid():
    grid = sample_grid([np.full((16, 16, 3), 0.5, np.float32)] * 2, columns=2, failures=[None, "noise"])
    assert np.allclose(grid[0, 0], 0.5) and np.allclose(grid[0, 16], (1, 0, 0)) and np.allclose(grid[8, 24], 0.5)
