"""CLIP image/text embeddings through open_clip: an architecture plus a pretrained tag or a local
weights file, an ``hf-hub:`` model (FashionCLIP works this way), or the offline ``demo:tiny-clip``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared.errors import EpochscopeError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipEncoder:
    def __init__(self, model, tokenizer, name: str, image_size: int, mean, std, device, batch_size: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.image_size = image_size
        self.mean = mean
        self.std = std
        self.device = device
        self.batch_size = batch_size

    @classmethod
    def load(cls, model: str, pretrained: str | None = None, device: str = "cpu", dtype=None) -> "ClipEncoder":
        import open_clip
        import torch

        name = model if not pretrained else f"{model}/{Path(pretrained).name if Path(pretrained).exists() else pretrained}"
        arch = model
        if model.startswith("demo:"):
            from shared.demo_assets import ensure_demo_assets, resolve_demo

            config_path = Path(resolve_demo(model))
            open_clip.add_model_config(config_path)
            arch = config_path.stem
            pretrained = pretrained or str(ensure_demo_assets().clip_weights)
            name = model
        elif pretrained and Path(pretrained).suffix in {".pt", ".pth", ".bin", ".ckpt"}:
            raise EpochscopeError(f"evaluation.clip_pretrained {pretrained}: pickle weight files are not "
                                  "loaded for safety; convert them to .safetensors")
        try:
            clip = open_clip.create_model(arch, pretrained=pretrained, device=device)
            tokenizer = open_clip.get_tokenizer(arch)
        except Exception as e:  # noqa: BLE001 - open_clip raises RuntimeError/OSError/HF errors
            raise EpochscopeError(
                f"cannot load CLIP model {model!r} (pretrained={pretrained!r}): {type(e).__name__}: {e}. "
                "Offline, use a local weights file (evaluation.clip_pretrained = '/path/model.safetensors'), "
                "a model already in the Hugging Face cache, or 'demo:tiny-clip'") from None
        clip.eval()
        if dtype is not None:
            clip.to(dtype=dtype)
        size = clip.visual.image_size
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        mean = getattr(clip.visual, "image_mean", None) or OPENAI_MEAN
        std = getattr(clip.visual, "image_std", None) or OPENAI_STD
        return cls(clip, tokenizer, name, size, mean, std, torch.device(device))

    def _preprocess(self, images: Sequence[np.ndarray]):
        """Batch resize (short side) + centre crop + normalise with torch, like open_clip's transform."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.stack([np.nan_to_num(np.asarray(im, np.float32)) for im in images]))
        x = x.permute(0, 3, 1, 2).clamp(0, 1).to(self.device)
        h, w = x.shape[-2:]
        scale = self.image_size / min(h, w)
        x = F.interpolate(x, size=(max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale))),
                          mode="bicubic", align_corners=False, antialias=True)
        h, w = x.shape[-2:]
        top, left = (h - self.image_size) // 2, (w - self.image_size) // 2
        x = x[..., top:top + self.image_size, left:left + self.image_size]
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        dtype = next(self.model.parameters()).dtype
        return ((x - mean) / std).to(dtype)

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        if len(images) == 0:
            return np.zeros((0, 0), np.float32)
        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                emb = self.model.encode_image(self._preprocess(images[i:i + self.batch_size])).float()
                out.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if len(texts) == 0:
            return np.zeros((0, 0), np.float32)
        with torch.no_grad():
            tokens = self.tokenizer(list(texts)).to(self.device)
            emb = self.model.encode_text(tokens).float()
            return torch.nn.functional.normalize(emb, dim=-1).cpu().numpy().astype(np.float32)
