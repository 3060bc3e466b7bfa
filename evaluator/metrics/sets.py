"""The two inputs of compute_metrics, prepared once: the trial's references (reused for every
checkpoint) and one checkpoint's samples. Preparing embeds the images with CLIP, marks failed samples
and caches the colour and image statistics, so comparing sets later is cheap."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from evaluator.metrics import color, embeddings
from evaluator.metrics.clip_encoder import ClipEncoder
from evaluator.metrics.failures import failure_reason
from evaluator.metrics.image_stats import mean_stats
from evaluator.metrics.images import as_rgb
from evaluator.metrics.memorisation import thumbnails


@dataclass
class ReferenceSet:
    """The trial's reference images (held-out validation images) and what is derived from them."""

    images: list[np.ndarray]
    embeddings: np.ndarray  # (N, D) CLIP image embeddings, L2-normalised
    lab_pixels: np.ndarray  # (M, 3) deterministic Lab pixel subsample
    mean_lab: np.ndarray  # (3,) mean Lab colour
    stats: dict[str, float]  # mean brightness, contrast_rms, saturation, clipped_fraction
    self_sim: float | None  # mean pairwise cosine among the references (None below 2)
    encoder: str = ""
    names: list[str] = field(default_factory=list)  # one label per image (file name), for warnings and copies
    thumbnails: np.ndarray | None = None  # (N, 32, 32, 3) uint8, for the near-copy test
    dino: np.ndarray | None = None  # (N, E) DINO embeddings, L2-normalised, when DINO is on
    lab_quantiles: object | None = None  # color.projected_quantiles(lab_pixels), a torch tensor on the device


@dataclass
class SampleSet:
    """One checkpoint's (or the baseline's) samples, index i made with prompts[i] and seeds[i].

    ``embeddings``, ``text_embeddings`` and ``lab_pixels`` cover the sound samples only, in order;
    ``failures[i]`` says why sample i failed, or is None."""

    images: list[np.ndarray]
    prompts: list[str]
    seeds: list[int]
    failures: list[str | None]
    embeddings: np.ndarray | None
    text_embeddings: np.ndarray | None
    stats: dict[str, float] | None
    lab_pixels: np.ndarray | None = None
    encoder: str = ""
    dino: np.ndarray | None = None  # DINO embeddings of the sound samples, when DINO is on
    device: str = "cpu"  # the torch device the colour and SSIM metrics of this set run on (the encoder's)

    @property
    def valid(self) -> list[np.ndarray]:
        """The sound samples, in order."""
        return [im for im, f in zip(self.images, self.failures) if f is None]

    @property
    def by_index(self) -> list[np.ndarray | None]:
        """Every sample by index, None where it failed (for same-seed pairing)."""
        return [im if f is None else None for im, f in zip(self.images, self.failures)]

    @property
    def failure_rate(self) -> float | None:
        return sum(f is not None for f in self.failures) / len(self.failures) if self.failures else None


def prepare_references(images: Sequence[np.ndarray], encoder: ClipEncoder, names: Sequence[str] | None = None,
                       dino=None) -> ReferenceSet:
    """Embed and summarise the references once per trial. Unreadable values (NaN) are zeroed.

    ``names`` label the images (default: their index); ``dino`` is the trial's DinoEncoder, or None."""
    ims = [np.clip(np.nan_to_num(as_rgb(im)), 0, 1) for im in images]
    pixels = color.lab_pixels(ims, device=_device(encoder))
    emb = encoder.encode_images(ims)
    return ReferenceSet(ims, emb, pixels, pixels.mean(axis=0) if len(pixels) else np.zeros(3),
                        mean_stats(ims) or {}, embeddings.ref_self_sim(emb) if len(ims) else None, encoder.name,
                        list(names) if names is not None else [str(i) for i in range(len(ims))], thumbnails(ims),
                        dino.encode_images(ims) if dino is not None and ims else None,
                        color.projected_quantiles(pixels, _device(encoder)) if len(pixels) else None)


def prepare_samples(images: Sequence[np.ndarray], prompts: Sequence[str], seeds: Sequence[int],
                    encoder: ClipEncoder, nsfw_flags: Sequence[bool] | None = None,
                    failures: Sequence[str | None] | None = None, dino=None) -> SampleSet:
    """Check, embed and summarise one set of samples.

    Args:
        images: HxWx3 float arrays in [0, 1]; NaN/inf allowed (they mark the sample failed).
        prompts, seeds: per sample, same length as images.
        encoder: the trial's CLIP encoder.
        nsfw_flags: the pipeline safety checker's verdict per sample (True = filtered, a failure).
        failures: reasons already known per sample (e.g. ``metrics.json`` ``samples[i].failed`` when
            rebuilding a set from PNGs after a restart, since a PNG cannot hold NaN); a non-None entry
            marks the sample failed without looking at it.
        dino: the trial's DinoEncoder, or None when DINO is off.
    """
    n = len(images)
    if len(prompts) != n or len(seeds) != n:
        raise ValueError(f"{n} images but {len(prompts)} prompts and {len(seeds)} seeds")
    raw = [as_rgb(im) for im in images]
    flags = list(nsfw_flags) if nsfw_flags is not None else [False] * n
    known = list(failures) if failures is not None else [None] * n
    reasons = [k or failure_reason(im, bool(f)) for im, f, k in zip(raw, flags, known)]
    ims = [np.clip(im, 0, 1) if r is None else im for im, r in zip(raw, reasons)]
    valid = [im for im, r in zip(ims, reasons) if r is None]
    valid_prompts = [str(p) for p, r in zip(prompts, reasons) if r is None]
    emb = encoder.encode_images(valid) if valid else None
    text = encoder.encode_texts(valid_prompts) if valid else None
    return SampleSet(ims, [str(p) for p in prompts], [int(s) for s in seeds], reasons, emb, text,
                     mean_stats(valid), color.lab_pixels(valid, device=_device(encoder)) if valid else None,
                     encoder.name, dino.encode_images(valid) if dino is not None and valid else None, _device(encoder))


def _device(encoder) -> str:
    """Where the encoder runs: the device for the torch metrics (the CPU for encoders without one)."""
    return str(getattr(encoder, "device", "cpu"))
