"""CLIP image/text embeddings through open_clip, loaded once per evaluator process.

Four ways to name a model (``evaluation.clip_model`` / ``evaluation.clip_pretrained``):

- ``demo:tiny-clip``: the offline demo asset (random weights, 32 px), for tests and the demo;
- an open_clip architecture plus a pretrained tag (``ViT-B-32`` + ``laion2b_s34b_b79k``): the weights must
  already be in the Hugging Face / open_clip cache when running offline;
- an architecture plus a local ``.safetensors`` file;
- ``hf-hub:org/name`` (FashionCLIP is ``hf-hub:patrickjohncyh/fashion-clip``), from the hub cache.

Images are preprocessed as a batch with torch ops on the model's device, following the model's own
open_clip preprocessing config (size, resize mode, interpolation, mean/std), instead of PIL per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evaluator.metrics.weights_file import local_weights_file
from shared.errors import EpochscopeError

if TYPE_CHECKING:
    import torch

_PRECISION = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}


class ClipEncoder:
    """An open_clip model, its tokenizer and its preprocessing; embeddings come back L2-normalised."""

    def __init__(self, model: Any, tokenizer: Any, name: str, device: "torch.device",
                 preprocess_cfg: dict[str, Any], batch_size: int = 64) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.batch_size = batch_size
        size = preprocess_cfg.get("size", 224)
        self.image_size: tuple[int, int] = (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) \
            else (int(size), int(size))
        self.mean = tuple(float(v) for v in preprocess_cfg["mean"])
        self.std = tuple(float(v) for v in preprocess_cfg["std"])
        self.resize_mode = str(preprocess_cfg.get("resize_mode", "shortest"))
        self.interpolation = str(preprocess_cfg.get("interpolation", "bicubic"))
        self.fill = float(preprocess_cfg.get("fill_color", 0)) / 255.0
        self._text_cache: dict[str, np.ndarray] = {}
        self.dim = int(self.encode_texts([""]).shape[1])

    @classmethod
    def load(cls, model: str, pretrained: str | None = None, device: str = "cpu",
             dtype: "torch.dtype | None" = None, cache_dir: str | None = None) -> "ClipEncoder":
        """Load a CLIP model offline-friendly; every failure becomes one EpochscopeError saying what to do.

        Args:
            model: ``demo:tiny-clip``, an open_clip architecture name, or ``hf-hub:org/name``.
            pretrained: an open_clip tag or a local ``.safetensors`` file (ignored for ``hf-hub:``).
            device: torch device string.
            dtype: torch.float32 (default), float16 or bfloat16.
            cache_dir: where open_clip looks for (and, online, downloads) weights; default: the Hugging
                Face cache.
        """
        import open_clip
        import torch

        arch, weights, name = _resolve(model, pretrained)
        precision = _PRECISION.get(str(dtype), "fp32") if dtype is not None else "fp32"
        try:
            clip = open_clip.create_model(arch, pretrained=weights, device=device, precision=precision,
                                          require_pretrained=True, cache_dir=cache_dir)
            tokenizer = open_clip.get_tokenizer(arch, cache_dir=cache_dir)
        except Exception as e:  # noqa: BLE001 - open_clip raises RuntimeError/OSError/ValueError/HF errors
            raise EpochscopeError(
                f"evaluation.clip_model: cannot load CLIP model {model!r} (pretrained={pretrained!r}): "
                f"{_first_sentence(e)}. Without network access the weights must already be in the Hugging "
                "Face cache (load the model once online), or use a local file (evaluation.clip_pretrained = "
                "'/path/model.safetensors') or 'demo:tiny-clip'") from None
        clip.eval()
        cfg = dict(getattr(clip.visual, "preprocess_cfg", None) or {})
        cfg.setdefault("size", clip.visual.image_size)
        cfg.setdefault("mean", getattr(clip.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
        cfg.setdefault("std", getattr(clip.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
        return cls(clip, tokenizer, name, torch.device(device), cfg)

    @property
    def dtype(self) -> "torch.dtype":
        """The dtype image batches are fed in: that of the image tower's first convolution (open_clip's
        fp16/bf16 precision converts convolutions and linears but keeps some parameters in fp32)."""
        import torch

        for module in self.model.visual.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                return module.weight.dtype
        return next(self.model.visual.parameters()).dtype

    def preprocess(self, images: Sequence[np.ndarray]) -> "torch.Tensor":
        """HxWx3 float [0,1] arrays -> a normalised (N, 3, h, w) batch, as open_clip's eval transform does.

        Images of different sizes are resized one by one, then stacked. NaN/inf become 0 (failed samples
        are normally left out before this)."""
        import torch

        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(np.shape(im), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(images)
        for idx in groups.values():
            batch = np.stack([np.nan_to_num(np.asarray(images[i], np.float32)[..., :3], nan=0.0, posinf=1.0,
                                            neginf=0.0) for i in idx])
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).clamp(0, 1)
            x = self._resize(x)
            for j, i in enumerate(idx):
                out[i] = x[j]
        x = torch.stack(out)  # type: ignore[arg-type]
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.dtype)

    def _resize(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch.nn.functional as F

        th, tw = self.image_size
        h, w = x.shape[-2:]
        mode = self.interpolation if self.interpolation in ("bilinear", "bicubic", "nearest") else "bicubic"

        def interp(t: "torch.Tensor", size: tuple[int, int]) -> "torch.Tensor":
            if tuple(t.shape[-2:]) == size:
                return t
            if mode == "nearest":
                return F.interpolate(t, size=size, mode="nearest")
            return F.interpolate(t, size=size, mode=mode, align_corners=False, antialias=True).clamp(0, 1)

        if self.resize_mode == "squash":
            return interp(x, (th, tw))
        if self.resize_mode == "longest":
            ratio = max(h / th, w / tw)
        else:  # "shortest", open_clip's default: short side to size, then centre crop
            ratio = min(h / th, w / tw)
        nh, nw = max(1, round(h / ratio)), max(1, round(w / ratio))
        x = interp(x, (nh, nw))
        return _center_crop_or_pad(x, th, tw, self.fill)

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) float32, L2-normalised; batched on the device."""
        import torch

        if len(images) == 0:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                emb = self.model.encode_image(self.preprocess(images[i:i + self.batch_size])).float()
                out.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32, L2-normalised; each distinct text is encoded once for the encoder's life (every
        checkpoint of a trial is scored on the same prompts)."""
        import torch

        if len(texts) == 0:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        cache = self._text_cache
        new = [t for t in dict.fromkeys(texts) if t not in cache]
        with torch.inference_mode():
            for i in range(0, len(new), self.batch_size):
                tokens = self.tokenizer(new[i:i + self.batch_size]).to(self.device)
                emb = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu().numpy()
                cache.update(zip(new[i:i + self.batch_size], emb.astype(np.float32)))
        return np.stack([cache[t] for t in texts])


def _resolve(model: str, pretrained: str | None) -> tuple[str, str | None, str]:
    """(open_clip model name, pretrained argument, name recorded in metrics.json)."""
    import open_clip

    if model.startswith("demo:"):
        from shared.demo_assets import ensure_demo_assets, resolve_demo

        config_path = Path(resolve_demo(model))
        open_clip.add_model_config(config_path)
        weights = pretrained or str(ensure_demo_assets().clip_weights)
        return config_path.stem, weights, model
    if model.startswith("hf-hub:"):
        return model, None, model  # open_clip reads config and weights from the hub (cache when offline)
    if not pretrained:
        raise EpochscopeError(f"evaluation.clip_pretrained: CLIP model {model!r} needs pretrained weights: "
                              "an open_clip tag (e.g. 'laion2b_s34b_b79k') or a local .safetensors file")
    path = Path(pretrained).expanduser()
    if path.is_file() or path.suffix or "/" in pretrained or "\\" in pretrained:
        path = local_weights_file("evaluation.clip_pretrained", pretrained, " or an open_clip tag")
        return model, str(path), f"{model}/{path.name}"
    arch = model.replace("/", "-")
    if open_clip.get_model_config(arch) is None:
        raise EpochscopeError(f"evaluation.clip_model: {model!r} is not an open_clip architecture (e.g. "
                              "'ViT-B-32'; open_clip.list_models() lists them) nor 'hf-hub:org/name'")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained.lower().replace("-", "_") not in tags:  # open_clip's own tag normalisation
        raise EpochscopeError(f"evaluation.clip_pretrained: {pretrained!r} is neither a file nor a pretrained tag "
                              f"of {model} (known tags: {', '.join(tags) or 'none'})")
    return arch, pretrained, f"{model}/{pretrained}"


def _center_crop_or_pad(x: "torch.Tensor", th: int, tw: int, fill: float) -> "torch.Tensor":
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    if h < th or w < tw:
        ph, pw = max(0, th - h), max(0, tw - w)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=fill)
        h, w = x.shape[-2:]
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))  # torchvision's CenterCrop
    return x[..., top:top + th, left:left + tw]


def _first_sentence(e: BaseException) -> str:
    """The gist of open_clip's/huggingface_hub's often multi-line, nested messages, on one line."""
    text = " ".join(str(e).split())
    cut = text.find(". ")
    text = text[:cut] if 0 < cut < 240 else text[:240]
    return f"{type(e).__name__}: {text}"
