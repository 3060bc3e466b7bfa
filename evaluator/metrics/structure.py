"""SSIM between two sample sets, pairing sample i with sample i (same prompt, same seed), so it says how
much the images changed between checkpoints (ssim_prev) or against the base model (ssim_base).

Computed in torch on the evaluator's device, every pair of a resolution in one batch. It is the SSIM of
Wang et al. (2004) as scikit-image computes it (``structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1)``): a Gaussian window 11 px wide, per channel, the
mean over the pixels whose window lies inside the image, then over the channels. Only those pixels count,
so no padding rule is needed. tests/test_speed_metrics_torch.py checks it against scikit-image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SIGMA = 1.5
RADIUS = 5  # scikit-image / scipy: int(truncate * sigma + 0.5) with truncate 3.5
MIN_SIDE = 2 * RADIUS + 1  # the Gaussian window is 11 px wide
K1, K2 = 0.01, 0.03


def _window(device, dtype):
    import torch

    x = torch.arange(-RADIUS, RADIUS + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / SIGMA) ** 2)
    return (w / w.sum()).to(device=device, dtype=dtype)


def _as_batch(images: Sequence, device):
    """(N, 3, H, W) float32 on ``device`` from HxWx3 arrays or tensors of one shape."""
    import torch

    return torch.stack([torch.as_tensor(im) for im in images]).to(device=device, dtype=torch.float32)[..., :3] \
        .permute(0, 3, 1, 2)


def ssim_batch(a, b):
    """Per-pair SSIM of two (N, C, H, W) tensors with values in [0, 1], H and W >= 11: a (N,) float64 tensor.

    In-place arithmetic on one buffer of the five filtered maps: a few passes over memory, no temporaries."""
    import torch
    import torch.nn.functional as F

    n, c, h, w = a.shape
    win = _window(a.device, torch.float32)
    k = 5 * c
    # channels_last: the depthwise convolutions run about 3x faster on the CPU than on NCHW
    maps = torch.empty((n, h, w, k), dtype=torch.float32, device=a.device).permute(0, 3, 1, 2)
    x, y = maps[:, :c], maps[:, c:2 * c]
    torch.sub(a, 0.5, out=x)  # centred: the variances lose less to float32 cancellation (they are shift-free)
    torch.sub(b, 0.5, out=y)
    torch.mul(x, x, out=maps[:, 2 * c:3 * c])
    torch.mul(y, y, out=maps[:, 3 * c:4 * c])
    torch.mul(x, y, out=maps[:, 4 * c:])
    maps = F.conv2d(maps, win.view(1, 1, 1, -1).expand(k, 1, 1, MIN_SIDE), groups=k)  # valid: no padding
    maps = F.conv2d(maps, win.view(1, 1, -1, 1).expand(k, 1, MIN_SIDE, 1), groups=k)
    ux, uy, uxx, uyy, uxy = maps.split(c, dim=1)  # filtered moments of the centred images
    c1, c2 = K1 ** 2, K2 ** 2
    den = uxx.add_(uyy).addcmul_(ux, ux, value=-1).addcmul_(uy, uy, value=-1).add_(c2)  # vx + vy + C2
    num = uxy.mul_(2).addcmul_(ux, uy, value=-2).add_(c2)  # 2 vxy + C2
    ux, uy = ux.add_(0.5), uy.add_(0.5)
    num.mul_(torch.mul(ux, uy).mul_(2).add_(c1))  # * (2 ux uy + C1)
    den.mul_(uyy.copy_(ux).mul_(ux).addcmul_(uy, uy).add_(c1))  # * (ux^2 + uy^2 + C1)
    s = num.div_(den)
    return s.sum(dim=(2, 3), dtype=torch.float64).div_(s.shape[2] * s.shape[3]).mean(dim=1)


def ssim(a, b, device=None) -> float:
    """SSIM of two HxWx3 images in [0, 1] (1 for identical images)."""
    return float(ssim_batch(_as_batch([a], device or "cpu"), _as_batch([b], device or "cpu"))[0])


def paired_ssim(a: Sequence, b: Sequence, workers: int | None = None, device=None) -> float | None:
    """Mean SSIM over indices where both samples exist (None marks a failed one) and have the same shape.

    Images are HxWx3 numpy arrays or tensors; the pairs of each resolution run as one batch on ``device``
    (default: the CPU). ``workers`` is ignored (pairs used to run in threads). None when no pair qualifies."""
    del workers
    pairs = [(x, y) for x, y in zip(a, b)
             if x is not None and y is not None and tuple(x.shape) == tuple(y.shape) and min(x.shape[:2]) >= MIN_SIDE]
    if not pairs:
        return None
    by_shape: dict[tuple, list[tuple]] = {}
    for p in pairs:
        by_shape.setdefault(tuple(p[0].shape), []).append(p)
    values = []
    for group in by_shape.values():
        xs, ys = zip(*group)
        values.extend(ssim_batch(_as_batch(xs, device or "cpu"), _as_batch(ys, device or "cpu")).tolist())
    return float(np.mean(values))
