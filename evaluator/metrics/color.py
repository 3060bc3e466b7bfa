"""Colour distance to the references in CIE Lab (D65): the sliced Wasserstein distance of the pixel
clouds, and CIEDE2000 between the mean colours. Both are 0 for identical sets and grow with a colour
shift. Pixels are subsampled deterministically before the Lab conversion, so the cost does not grow
with resolution and the same images always give the same numbers. Everything runs in torch, float64, on
the evaluator's device; tests/test_speed_metrics_torch.py checks it against scikit-image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_PROJECTIONS = 64
N_QUANTILES = 256
MAX_PIXELS = 32768  # over the whole set: enough for stable quantiles and mean colours
SEED = 0


def _directions() -> np.ndarray:
    dirs = np.random.default_rng(SEED).normal(size=(N_PROJECTIONS, 3))
    return dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


DIRECTIONS = _directions()  # fixed unit vectors in Lab space, the same for every run
_QUANTILES = (np.arange(N_QUANTILES) + 0.5) / N_QUANTILES
XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],  # sRGB (D65) -> CIE XYZ, scikit-image's matrix
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]])
WHITE_D65 = np.array([0.95047, 1.0, 1.08883])  # the D65 white point, 2° observer


def _pixel_index(n_pixels: int, k: int) -> np.ndarray:
    """The same k pixel positions for every image with n_pixels pixels (all of them when k >= n)."""
    if k >= n_pixels:
        return np.arange(n_pixels)
    return np.sort(np.random.default_rng(SEED).choice(n_pixels, k, replace=False))


def rgb_to_lab(rgb):
    """CIE Lab (D65, 2° observer) of sRGB values in [0, 1], a (..., 3) tensor, in its dtype and on its device.

    The formulas and constants of scikit-image's ``rgb2lab``."""
    import torch

    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ torch.as_tensor(XYZ_FROM_RGB, dtype=rgb.dtype, device=rgb.device).T
    xyz = xyz / torch.as_tensor(WHITE_D65, dtype=rgb.dtype, device=rgb.device)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(0) ** (1 / 3), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(-1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-1)


def lab_pixels(images: Sequence, max_pixels: int = MAX_PIXELS, device=None) -> np.ndarray:
    """Lab values of a deterministic subsample of every image's pixels, (M, 3) float64.

    Each image gives the same share (max_pixels / len(images)), so the set's colours are weighted by image,
    not by resolution. Images are HxWx3 numpy arrays or tensors; the conversion runs in torch on ``device``
    (default: where a tensor image lives, else the CPU)."""
    import torch

    if not images:
        return np.zeros((0, 3))
    device = device or (images[0].device if isinstance(images[0], torch.Tensor) else "cpu")
    per_image = max(1, -(-max_pixels // len(images)))
    picked = []
    for im in images:
        flat = torch.as_tensor(im)[..., :3].reshape(-1, 3)
        index = torch.from_numpy(_pixel_index(len(flat), per_image)).to(flat.device)
        picked.append(flat[index].to(device=device, dtype=torch.float64))
    rgb = torch.cat(picked).clamp(0, 1)
    return rgb_to_lab(rgb).cpu().numpy()


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, device=None, b_quantiles=None) -> float:
    """Mean over the fixed directions of the 1-D Wasserstein-1 distance between the projected clouds.

    Each 1-D distance is the mean absolute difference of N_QUANTILES quantiles (linear interpolation, as
    numpy's default), so sets of different sizes compare fine. Lab units (L runs 0..100). Runs in torch,
    float64, on ``device`` (default: the CPU). ``b_quantiles``: ``projected_quantiles(b)``, kept by the
    caller (the references' are the same for every checkpoint; the sorts are most of the cost)."""
    qa = projected_quantiles(a, device)
    qb = projected_quantiles(b, device) if b_quantiles is None else b_quantiles.to(qa.device)
    return float((qa - qb).abs().mean())


def projected_quantiles(lab: np.ndarray, device=None):
    """The (N_QUANTILES, N_PROJECTIONS) float64 tensor of a Lab cloud's quantiles along DIRECTIONS."""
    import torch

    dirs = torch.as_tensor(DIRECTIONS, dtype=torch.float64, device=device or "cpu")
    q = torch.as_tensor(_QUANTILES, dtype=torch.float64, device=dirs.device)
    return _quantiles(torch.as_tensor(lab, dtype=torch.float64, device=dirs.device) @ dirs.T, q)


def _quantiles(x, q):
    """numpy.quantile(x, q, axis=0) with linear interpolation, for a (M, D) tensor.

    The columns are sorted as rows of the transpose (contiguous). On the CPU numpy sorts them: torch's CPU
    sort (which also builds indices) is about ten times slower there."""
    import torch

    rows = x.T.contiguous()
    if rows.device.type == "cpu":
        s = torch.from_numpy(np.sort(rows.numpy(), axis=1))
    else:
        s = rows.sort(dim=1).values
    pos = q * (s.shape[1] - 1)
    lo = pos.floor().long()
    hi = torch.clamp(lo + 1, max=s.shape[1] - 1)
    frac = pos - lo
    return (s[:, lo] + (s[:, hi] - s[:, lo]) * frac).T


def delta_e2000(lab_a, lab_b) -> float:
    """CIEDE2000 between two Lab colours (about 2.3 is a just-noticeable difference).

    The formulas of scikit-image's ``deltaE_ciede2000`` (Sharma, Wu & Dalal 2005), in torch float64."""
    import math

    import torch

    la = torch.as_tensor(np.asarray(lab_a, np.float64) if not isinstance(lab_a, torch.Tensor) else lab_a,
                         dtype=torch.float64)
    lb = torch.as_tensor(np.asarray(lab_b, np.float64) if not isinstance(lab_b, torch.Tensor) else lab_b,
                         dtype=torch.float64, device=la.device)
    (l1, a1, b1), (l2, a2, b2) = la[..., :3].unbind(-1), lb[..., :3].unbind(-1)
    cbar = 0.5 * (torch.hypot(a1, b1) + torch.hypot(a2, b2))
    g = 0.5 * (1 - torch.sqrt(cbar ** 7 / (cbar ** 7 + 25.0 ** 7)))
    c1, h1 = _polar_2pi(a1 * (1 + g), b1)
    c2, h2 = _polar_2pi(a2 * (1 + g), b2)
    lbar = 0.5 * (l1 + l2)
    t = (lbar - 50) ** 2
    l_term = (l2 - l1) / (1 + 0.015 * t / torch.sqrt(20 + t))
    cbar = 0.5 * (c1 + c2)
    c_term = (c2 - c1) / (1 + 0.045 * cbar)
    h_diff, h_sum, cc = h2 - h1, h1 + h2, c1 * c2
    dh = torch.where(h_diff > math.pi, h_diff - 2 * math.pi,
                     torch.where(h_diff < -math.pi, h_diff + 2 * math.pi, h_diff))
    dh = torch.where(cc == 0, torch.zeros_like(dh), dh)
    dh_term = 2 * torch.sqrt(cc) * torch.sin(dh / 2)
    wrap = (cc != 0) & (h_diff.abs() > math.pi)
    hbar = torch.where(wrap & (h_sum < 2 * math.pi), h_sum + 2 * math.pi,
                       torch.where(wrap & (h_sum >= 2 * math.pi), h_sum - 2 * math.pi, h_sum))
    hbar = torch.where(cc == 0, hbar * 2, hbar) * 0.5
    tt = (1 - 0.17 * torch.cos(hbar - math.radians(30)) + 0.24 * torch.cos(2 * hbar)
          + 0.32 * torch.cos(3 * hbar + math.radians(6)) - 0.20 * torch.cos(4 * hbar - math.radians(63)))
    h_term = dh_term / (1 + 0.015 * cbar * tt)
    rc = 2 * torch.sqrt(cbar ** 7 / (cbar ** 7 + 25.0 ** 7))
    dtheta = math.radians(30) * torch.exp(-(((torch.rad2deg(hbar) - 275) / 25) ** 2))
    r_term = -torch.sin(2 * dtheta) * rc * c_term * h_term
    return float(torch.sqrt((l_term ** 2 + c_term ** 2 + h_term ** 2 + r_term).clamp_min(0)))


def _polar_2pi(x, y):
    """Radius and angle in [0, 2 pi) of (x, y)."""
    import math

    import torch

    angle = torch.atan2(y, x)
    return torch.hypot(x, y), torch.where(angle < 0, angle + 2 * math.pi, angle)
