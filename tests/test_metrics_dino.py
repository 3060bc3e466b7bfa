"""DINO subject-identity metric: the tiny demo ViT on synthetic images, the timm local-file path, errors."""

from __future__ import annotations

import numpy as np
import pytest
from _metrics_helpers import hue_shift, scene

from evaluator.metrics import (ClipEncoder, DinoEncoder, compute_metrics, prepare_references, prepare_samples,
                               prepare_training)
from shared.errors import EpochscopeError

PROMPT = "a red circle on a blue background, sks style"


@pytest.fixture(scope="module")
def dino(demo_assets):
    return DinoEncoder.load("demo:tiny-dino")


@pytest.fixture(scope="module")
def clip(demo_assets):
    return ClipEncoder.load("demo:tiny-clip")


def test_identical_images_give_1_and_others_less(dino):
    emb = dino.encode_images([scene(0), scene(0), hue_shift(scene(0), 0.03), scene(1)])
    assert emb.shape == (4, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] == pytest.approx(1.0, abs=1e-5)
    assert sim[0, 3] < sim[0, 2] < 1 - 1e-4  # a slight recolour is closer than another picture


def test_dino_metrics_in_compute(dino, clip):
    refs_images, train_images = [scene(i) for i in range(20, 23)], [scene(i) for i in range(3)]
    refs = prepare_references(refs_images, clip, dino=dino)
    training = prepare_training(train_images, ["a", "b", "c"], clip, dino)
    images = [scene(i) for i in range(10, 14)]
    s = prepare_samples(images, [PROMPT] * 4, [0, 1, 2, 3], clip, dino=dino)
    m = compute_metrics(s, refs, training=training)
    expect = dino.encode_images(images) @ dino.encode_images(refs_images).T
    assert m.dino == pytest.approx(float(expect.mean()), abs=1e-5)
    assert m.dino_train == pytest.approx(float((dino.encode_images(images) @ training.dino.T).mean()), abs=1e-5)
    same = compute_metrics(prepare_samples(refs_images, [PROMPT] * 3, [0, 1, 2], clip, dino=dino), refs)
    n = len(refs_images)
    self_sim = dino.encode_images(refs_images) @ dino.encode_images(refs_images).T
    assert same.dino == pytest.approx(float(self_sim.mean()), abs=1e-5)  # (1 + (n-1) mean off-diagonal) / n
    assert same.dino == pytest.approx((1 + (n - 1) * (self_sim.sum() - n) / (n * (n - 1))) / n, abs=1e-5)
    off = compute_metrics(prepare_samples(images, [PROMPT] * 4, [0, 1, 2, 3], clip), refs, training=training)
    assert off.dino is None and off.dino_train is None  # DINO off: not measured, not in the score


def test_a_timm_architecture_from_a_local_safetensors_file(tmp_path):
    """The real-weights code path (timm + pretrained_cfg_overlay file), offline, with a small ViT."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    weights = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    enc = DinoEncoder.load("vit_tiny_patch16_224", str(weights))
    assert enc.name == "vit_tiny_patch16_224/vit_tiny.safetensors" and enc.size == 224
    with torch.inference_mode():
        x = enc.preprocess([scene(0)])
        direct = torch.nn.functional.normalize(net.eval()(x), dim=-1).numpy()
    assert np.allclose(enc.encode_images([scene(0)]), direct, atol=1e-5), "the file's weights are the ones used"


@pytest.mark.parametrize("model, pretrained, message", [
    ("vit_small_patch14_dinov2", None, "needs a local .safetensors"),
    ("vit_small_patch14_dinov2", "/nope/w.safetensors", "no such file"),
    ("vit_small_patch14_dinov2", "/x/w.pth", "pickle"),
    ("not_a_model", "__FILE__", "not a timm architecture"),
    ("hf-hub:epochscope-test/not-cached-anywhere", None, "Hugging Face cache"),
])
def test_load_errors_say_what_to_do(tmp_path, monkeypatch, model, pretrained, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if pretrained == "__FILE__":
        pretrained = str(tmp_path / "w.safetensors")
        (tmp_path / "w.safetensors").write_bytes(b"x")
    with pytest.raises(EpochscopeError, match=message) as info:
        DinoEncoder.load(model, pretrained)
    assert "\n" not in str(info.value)
