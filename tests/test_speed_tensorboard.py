"""TensorBoard off the slow path: one writer per trial kept open and flushed, a numpy CRC-32C in place of
tensorboard's pure-Python one, and the writer reopened when its file is moved away or closed."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from evaluator import tensorboard_crc
from evaluator.tensorboard_log import _writers, close_writers, log_checkpoint
from shared.records import Metrics
from shared.trial import Trial


def _steps(logdir) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars("eval/score")]


def _events(logdir) -> list:
    return sorted(p.name for p in logdir.glob("events.out.tfevents.*"))


@pytest.mark.parametrize("n", [0, 1, 7, 4095, 4096, 4097, 65536 + 3, 1 << 20])
def test_c_crc32c_equals_tensorboards(n):
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc_finalize, crc_update

    data = os.urandom(n)
    assert tensorboard_crc.crc32c(data) == crc_finalize(crc_update(0, data))


def test_crc32c_check_value():
    assert tensorboard_crc.crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value


def test_the_crc_is_swapped_only_for_google_crc32cs_c_extension(monkeypatch):
    """google-crc32c without its C extension (1.5 beside setuptools >= 82) is no faster: keep tensorboard's."""
    import google_crc32c
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow

    monkeypatch.setattr(pywrap_tensorflow, "crc32c", pywrap_tensorflow.crc32c)  # restored after the test
    own = pywrap_tensorflow.crc32c
    monkeypatch.setattr(google_crc32c, "implementation", "python")
    assert tensorboard_crc.install() is False and pywrap_tensorflow.crc32c is own
    monkeypatch.setattr(google_crc32c, "implementation", "c")
    assert tensorboard_crc.install() is True and pywrap_tensorflow.crc32c is tensorboard_crc.crc32c


def test_one_writer_per_trial_flushed_after_each_checkpoint(tmp_path):
    trial = Trial(tmp_path / "trial_0001")
    logdir = trial.logs_dir / "evaluator"
    img = [np.full((16, 16, 3), 0.5, np.float32)] * 2
    try:
        for step in (0, 4, 8):
            log_checkpoint(trial, step, Metrics(score=0.5 + step / 100, failure_rate=0.0), img, "checkpoint")
            assert _steps(logdir)[-1] == step  # on disk as soon as the call returns
        assert len(_events(logdir)) == 1 and logdir in _writers
    finally:
        close_writers()
    assert logdir not in _writers and _steps(logdir) == [0, 4, 8]


def test_rescore_with_an_open_writer_keeps_one_point_per_step_and_reopens(tmp_path):
    trial = Trial(tmp_path / "trial_0001")
    logdir = trial.logs_dir / "evaluator"
    img = [np.full((16, 16, 3), 0.5, np.float32)]
    try:
        for step in (0, 4, 8):
            log_checkpoint(trial, step, Metrics(score=0.5, failure_rate=0.0), img, "checkpoint")
        log_checkpoint(trial, 4, Metrics(score=0.9, failure_rate=0.0), img, "checkpoint")  # evaluator run --force
        assert _steps(logdir) == [0, 4, 8]
        log_checkpoint(trial, 12, Metrics(score=0.5, failure_rate=0.0), img, "checkpoint")  # a new writer again
        assert _steps(logdir) == [0, 4, 8, 12]
    finally:
        close_writers()


def test_logs_moved_away_while_open_get_a_new_writer(tmp_path):
    """A trainer's --new moves logs/ into a backup folder; the evaluator's next point lands in the new logs/."""
    trial = Trial(tmp_path / "trial_0001")
    logdir = trial.logs_dir / "evaluator"
    img = [np.full((16, 16, 3), 0.5, np.float32)]
    try:
        log_checkpoint(trial, 0, Metrics(score=0.5, failure_rate=0.0), img, "baseline")
        shutil.move(str(trial.logs_dir), str(tmp_path / "backup"))
        log_checkpoint(trial, 4, Metrics(score=0.6, failure_rate=0.0), img, "checkpoint")
        assert _steps(logdir) == [4] and _steps(tmp_path / "backup" / "evaluator") == [0]
    finally:
        close_writers()


def test_encoded_grid_is_what_add_image_would_store():
    from torch.utils.tensorboard.summary import image

    from evaluator.tensorboard_log import encode_grid, sample_grid

    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 1, (24, 24, 3)).astype(np.float32) for _ in range(3)]
    ours = encode_grid(images, failures=[None, "noise", None])
    theirs = image("t", sample_grid(images, failures=[None, "noise", None]), dataformats="HWC").value[0].image
    assert (ours.height, ours.width, ours.png) == (theirs.height, theirs.width, theirs.encoded_image_string)


def test_the_grid_is_a_preview_of_tiles_at_most_grid_tile_max_pixels():
    """512 px samples become 256 px tiles (each pixel the mean of a 2x2 block), 1000 px ones 333 px (a
    factor of 3, one pixel cut), and the demo's 64 px ones stay as they are."""
    from evaluator.tensorboard_log import GRID_TILE_MAX, encode_grid, preview

    assert GRID_TILE_MAX == 384
    rng = np.random.default_rng(1)
    big = rng.uniform(0, 1, (512, 512, 3)).astype(np.float32)
    small = preview(big)
    assert small.shape == (256, 256, 3)
    np.testing.assert_allclose(small[10, 20], big[20:22, 40:42].mean(axis=(0, 1)), atol=1e-6)
    assert preview(np.zeros((1000, 1000, 3), np.float32)).shape == (333, 333, 3)
    demo = rng.uniform(0, 1, (64, 64, 3)).astype(np.float32)
    assert preview(demo) is demo
    grid = encode_grid([big] * 8)
    assert (grid.width, grid.height) == (4 * 256, 2 * 256)
