"""DINO image embeddings (subject identity, the DreamBooth paper's DINO metric) through timm.

Three ways to name a model (``evaluation.dino_model`` / ``evaluation.dino_pretrained``):

- ``demo:tiny-dino``: the offline demo asset, a 2-block DINOv2-layout ViT with random weights (its numbers
  test the machinery, they say nothing about images);
- a timm architecture plus a local ``.safetensors`` file, e.g. ``vit_small_patch14_dinov2.lvd142m`` +
  ``/models/dinov2_vits14.safetensors`` (read offline; position embeddings are resampled by timm);
- ``hf-hub:timm/vit_small_patch14_dinov2.lvd142m``: from the Hugging Face cache (offline once cached).

The embedding is the model's pooled output (the class token for DINOv2) at ``IMAGE_SIZE`` px, after
the model's own mean/std; images are resized (short side, bicubic, antialiased) and centre-cropped as
one torch batch on the device, and embeddings come back L2-normalised.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evaluator.metrics.clip_encoder import _center_crop_or_pad, _first_sentence
from evaluator.metrics.weights_file import local_weights_file
from shared.errors import EpochscopeError

if TYPE_CHECKING:
    import torch

IMAGE_SIZE = 224  # DINOv2 patch 14: 16x16 tokens, as in DreamBooth-style DINO evaluations


class DinoEncoder:
    """A timm ViT used as an image embedder; embeddings come back L2-normalised."""

    def __init__(self, model: Any, name: str, device: "torch.device", size: int, mean: Sequence[float],
                 std: Sequence[float], batch_size: int = 32) -> None:
        self.model = model
        self.name = name
        self.device = device
        self.size = int(size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.batch_size = batch_size

    @classmethod
    def load(cls, model: str, pretrained: str | None = None, device: str = "cpu") -> "DinoEncoder":
        """Load offline-friendly; every failure becomes one EpochscopeError saying what to do.

        Args:
            model: ``demo:tiny-dino``, ``hf-hub:org/name`` or a timm architecture name.
            pretrained: a local ``.safetensors`` file (required for a bare architecture name).
            device: torch device string.
        """
        import torch

        try:
            net, name, size = _create(model, pretrained)
        except EpochscopeError:
            raise
        except Exception as e:  # noqa: BLE001 - timm/huggingface_hub raise many types
            raise EpochscopeError(
                f"evaluation.dino_model: cannot load DINO model {model!r} (pretrained={pretrained!r}): "
                f"{_first_sentence(e)}. Without network access the weights must already be in the Hugging Face "
                "cache, or use a local file (evaluation.dino_pretrained = '/path/model.safetensors') or "
                "'demo:tiny-dino'") from None
        cfg = getattr(net, "pretrained_cfg", None) or {}
        net = net.to(device).eval()
        return cls(net, name, torch.device(device), size, cfg.get("mean", (0.485, 0.456, 0.406)),
                   cfg.get("std", (0.229, 0.224, 0.225)))

    def preprocess(self, images: Sequence[np.ndarray]) -> "torch.Tensor":
        """HxWx3 float [0, 1] arrays -> a normalised (N, 3, size, size) batch."""
        import torch
        import torch.nn.functional as F

        out = []
        for im in images:
            a = np.nan_to_num(np.asarray(im, np.float32)[..., :3], nan=0.0, posinf=1.0, neginf=0.0)
            x = torch.from_numpy(np.ascontiguousarray(a)).to(self.device).permute(2, 0, 1)[None].clamp(0, 1)
            h, w = x.shape[-2:]
            ratio = min(h / self.size, w / self.size)
            nh, nw = max(1, round(h / ratio)), max(1, round(w / ratio))
            if (nh, nw) != (h, w):
                x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
            out.append(_center_crop_or_pad(x, self.size, self.size, 0.0)[0])
        x = torch.stack(out)
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        dtype = next(self.model.parameters()).dtype
        return ((x - mean) / std).to(dtype)

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, E) float32, L2-normalised; batched on the device."""
        import torch

        if len(images) == 0:
            return np.zeros((0, int(getattr(self.model, "num_features", 0))), np.float32)
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                emb = self.model(self.preprocess(images[i:i + self.batch_size])).float()
                out.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)


def _create(model: str, pretrained: str | None) -> tuple[Any, str, int]:
    """(timm model without a classifier head, name recorded in metrics.json, input size)."""
    import timm

    if model.startswith("demo:"):
        from shared.demo_assets import resolve_demo
        from safetensors.torch import load_file

        config_path = Path(resolve_demo(model))
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
        net = timm.create_model(cfg["architecture"], pretrained=False, num_classes=0, **cfg["kwargs"])
        weights = Path(pretrained) if pretrained else config_path.with_name(cfg["weights"])
        net.load_state_dict(load_file(str(weights)))
        return net, model, int(cfg["kwargs"]["img_size"])
    if model.startswith("hf-hub:"):
        return timm.create_model(model, pretrained=True, num_classes=0, img_size=IMAGE_SIZE), model, IMAGE_SIZE
    if not pretrained:
        raise EpochscopeError(f"evaluation.dino_pretrained: DINO model {model!r} needs a local .safetensors "
                              "weights file, or name it as 'hf-hub:timm/...' to use the Hugging Face cache")
    path = local_weights_file("evaluation.dino_pretrained", pretrained)
    arch = model.split(".")[0] if model not in timm.list_models() else model
    if not timm.is_model(arch):
        raise EpochscopeError(f"evaluation.dino_model: {model!r} is not a timm architecture (e.g. "
                              "'vit_small_patch14_dinov2') nor 'hf-hub:org/name'")
    # custom_load off: some default configs (augreg .npz) would hand our safetensors file to np.load
    overlay = {"file": str(path), "custom_load": False}
    net = timm.create_model(model, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0, img_size=IMAGE_SIZE)
    return net, f"{model}/{path.name}", IMAGE_SIZE
