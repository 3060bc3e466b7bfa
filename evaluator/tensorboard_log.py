"""eval/* scalars at each checkpoint's step and a grid of its samples, in the trial's logs/evaluator/."""

from __future__ import annotations

import numpy as np

from shared.records import Metrics
from shared.trial import Trial


def sample_grid(images: list[np.ndarray], columns: int = 4) -> np.ndarray:
    """HxWx3 grid of equally sized images (NaN shown as black)."""
    if not images:
        return np.zeros((8, 8, 3), np.float32)
    h, w = images[0].shape[:2]
    rows = (len(images) + columns - 1) // columns
    grid = np.zeros((rows * h, columns * w, 3), np.float32)
    for i, im in enumerate(images):
        if im.shape[:2] != (h, w):
            continue
        r, c = divmod(i, columns)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = np.nan_to_num(np.clip(im[..., :3], 0, 1))
    return grid


def log_checkpoint(trial: Trial, step: int, metrics: Metrics, images: list[np.ndarray], tag: str) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(trial.logs_dir / "evaluator"))
    try:
        for name, value in metrics.model_dump().items():
            if value is not None:
                writer.add_scalar(f"eval/{name}", value, step)
        writer.add_image(f"samples/{tag}", sample_grid(images), step, dataformats="HWC")
    finally:
        writer.close()
