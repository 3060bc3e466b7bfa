"""ClipEncoder: the real tiny open_clip model, a local weights file, and clear errors offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluator.metrics import ClipEncoder
from shared.errors import EpochscopeError
from _metrics_helpers import scene


@pytest.fixture(scope="module")
def encoder(demo_assets):
    return ClipEncoder.load("demo:tiny-clip")


def test_demo_encoder_gives_normalised_float32_embeddings(encoder):
    images = [scene(i) for i in range(5)]
    emb = encoder.encode_images(images)
    text = encoder.encode_texts(["a red circle", "a blue square", "a red circle"])
    assert encoder.name == "demo:tiny-clip" and encoder.image_size == (32, 32)
    assert emb.shape == (5, encoder.dim) and emb.dtype == np.float32
    assert text.shape == (3, encoder.dim) and text.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(text, axis=1), 1, atol=1e-5)
    assert np.array_equal(text[0], text[2]) and not np.allclose(text[0], text[1])
    assert np.allclose(encoder.encode_images(images[:2]), emb[:2], atol=1e-6)  # batch-independent
    assert (emb @ emb.T)[0, 1] < 0.9999  # different images, different embeddings
    assert encoder.encode_images([]).shape == (0, encoder.dim)


def test_batched_preprocessing_matches_open_clips_own_transform(encoder):
    """Our torch resize + crop + normalise equals open_clip's PIL eval transform up to 8-bit rounding."""
    from PIL import Image
    from open_clip.transform import PreprocessCfg, image_transform_v2

    transform = image_transform_v2(PreprocessCfg(**encoder.model.visual.preprocess_cfg), is_train=False)
    for shape in [(64, 64), (48, 80), (100, 60)]:
        img = scene(3, max(shape))[: shape[0], : shape[1]]
        ref = transform(Image.fromarray((img * 255).round().astype(np.uint8)))[None]
        ours = encoder.preprocess([img])
        assert ours.shape == ref.shape == (1, 3, 32, 32)
        assert (ours - ref).abs().mean() < 0.01
        cos = torch.nn.functional.cosine_similarity(encoder.model.encode_image(ours),
                                                    encoder.model.encode_image(ref)).item()
        assert cos > 0.9999


def test_mixed_sizes_and_bf16(encoder, demo_assets):
    images = [scene(1, 64), scene(2, 48), scene(1, 64)]
    emb = encoder.encode_images(images)
    assert np.allclose(emb[0], emb[2]) and emb.shape == (3, encoder.dim)
    low = ClipEncoder.load("demo:tiny-clip", dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16
    emb16 = low.encode_images(images)
    assert emb16.dtype == np.float32 and np.all(np.sum(emb16 * emb, axis=1) > 0.99)


def test_architecture_plus_local_safetensors_file(tmp_path, encoder):
    """Path (3): an architecture name registered from a config, weights from a local .safetensors file."""
    import open_clip
    from safetensors.torch import save_file

    from shared.demo_assets import TINY_CLIP_NAME, resolve_demo

    weights = tmp_path / "my-clip.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.model.state_dict().items()}, str(weights))
    open_clip.add_model_config(resolve_demo("demo:tiny-clip"))
    local = ClipEncoder.load(TINY_CLIP_NAME, str(weights))
    assert local.name == f"{TINY_CLIP_NAME}/my-clip.safetensors"
    images = [scene(i) for i in range(3)]
    assert np.allclose(local.encode_images(images), encoder.encode_images(images), atol=1e-6)
    assert np.allclose(local.encode_texts(["sks style"]), encoder.encode_texts(["sks style"]), atol=1e-6)


def _hub_cache(root, repo: str, config: dict, weights_from=None):
    """A Hugging Face cache holding ``repo`` as an open_clip hub model would be stored after one download."""
    import json

    from safetensors.torch import save_file

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / sha
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(sha)
    (snapshot / "open_clip_config.json").write_text(json.dumps(config))
    if weights_from is not None:
        save_file({k: v.contiguous() for k, v in weights_from.state_dict().items()},
                  str(snapshot / "open_clip_model.safetensors"))
    return root


def test_hf_hub_model_from_the_offline_cache(tmp_path, encoder):
    """Path (4), as FashionCLIP loads: config, preprocessing and weights from a (here hand-built) hub cache."""
    import json

    from shared.demo_assets import resolve_demo

    model_cfg = json.loads(open(resolve_demo("demo:tiny-clip"), encoding="utf-8").read())
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": mean, "std": std}}
    cache = _hub_cache(tmp_path / "hub", "someone/tiny-clip", config, weights_from=encoder.model)
    hub = ClipEncoder.load("hf-hub:someone/tiny-clip", cache_dir=str(cache))
    assert hub.name == "hf-hub:someone/tiny-clip"
    assert hub.mean == tuple(mean) and hub.std == tuple(std)  # the model's own preprocessing, not CLIP's
    images = [scene(i) for i in range(3)]
    for a, b in zip(hub.model.state_dict().values(), encoder.model.state_dict().values()):
        assert torch.equal(a, b)
    assert np.allclose(hub.encode_texts(["sks"]), encoder.encode_texts(["sks"]), atol=1e-6)
    assert not np.allclose(hub.encode_images(images), encoder.encode_images(images), atol=1e-3)  # other mean/std

    no_weights = _hub_cache(tmp_path / "hub2", "someone/tiny-clip", config)
    with pytest.raises(EpochscopeError, match="cannot load CLIP model 'hf-hub:someone/tiny-clip'"):
        ClipEncoder.load("hf-hub:someone/tiny-clip", cache_dir=str(no_weights))  # never random weights


@pytest.mark.parametrize("model, pretrained, message", [
    ("ViT-B-32", "laion2b_s34b_b79k", "cannot load CLIP model 'ViT-B-32'.*Hugging Face cache"),
    ("hf-hub:patrickjohncyh/fashion-clip", None, "cannot load CLIP model 'hf-hub:patrickjohncyh/fashion-clip'"),
    ("no-such-arch", "laion2b_s34b_b79k", "'no-such-arch' is not an open_clip architecture"),
    ("ViT-B-32", "no_such_tag", "neither a file nor a pretrained tag of ViT-B-32"),
    ("ViT-B-32", None, "needs pretrained weights"),
    ("ViT-B-32", "/nonexistent/clip.safetensors", "no such file"),
    ("ViT-B-32", "weights.pt", "pickle"),
])
def test_unavailable_models_give_one_clear_error(model, pretrained, message, tmp_path):
    """Offline (HF_HUB_OFFLINE=1, an empty cache): one line naming the model and what to do."""
    with pytest.raises(EpochscopeError, match=message) as info:
        ClipEncoder.load(model, pretrained, cache_dir=str(tmp_path / "empty-cache"))
    assert "\n" not in str(info.value)


# CLIP runs in the pipeline's dtype (Models.load). Measured on these images with the demo CLIP, the largest
# change from fp32 is 1.8e-3 in bf16 (clip_t; the score 2.7e-4) and 1.2e-4 in fp16 (ref_self_sim); a random
# full-size ViT-B-32 moved clip_t by 1e-4 in bf16. The tolerances below are the stated bound for every value
# CLIP feeds, the score included.
HALF_TOLERANCE = {torch.bfloat16: 3e-3, torch.float16: 3e-4}
CLIP_FIELDS = ("clip_t", "clip_i", "diversity", "max_ref_sim", "ref_self_sim", "cmmd", "max_train_sim", "score")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_clip_metrics_in_half_precision_stay_within_the_stated_tolerance_of_fp32(encoder, dtype):
    from evaluator.metrics import compute_metrics, prepare_references, prepare_samples, prepare_training

    samples = [scene(i, 64) for i in range(8)]
    refs = [scene(100 + i, 64) for i in range(4)]
    prompts = ["a red circle on a blue background, sks style", "a yellow square", "a photo of a dog", "sks"] * 2

    def metrics(enc):
        training = prepare_training([scene(200 + i, 64) for i in range(3)], [f"t{i}.png" for i in range(3)], enc)
        return compute_metrics(prepare_samples(samples, prompts, list(range(8)), enc), prepare_references(refs, enc),
                               training=training)

    low = ClipEncoder.load("demo:tiny-clip", dtype=dtype)
    assert low.dtype == dtype
    full, half = metrics(encoder), metrics(low)
    for name in CLIP_FIELDS:
        a, b = getattr(full, name), getattr(half, name)
        assert a is not None and abs(a - b) <= HALF_TOLERANCE[dtype], f"{name}: fp32 {a} vs {dtype} {b}"
    assert full.color_swd_lab == half.color_swd_lab  # the pixel metrics do not go through CLIP


def test_models_load_runs_clip_in_the_pipelines_dtype(demo_assets, tmp_path):
    from evaluator.scoring import Models
    from evaluator.settings import settings_for
    from conftest import write_demo_config
    from shared.config import load_config

    settings = settings_for(load_config(write_demo_config(tmp_path / "c.toml", tmp_path / "out")))
    models = Models.load(settings, "cpu", "bf16")
    assert models.pipe.unet.dtype == models.encoder.dtype == torch.bfloat16


def test_each_text_is_encoded_once_for_the_encoders_life(demo_assets):
    """Every checkpoint is scored on the same prompts: the second call encodes nothing, and gives the same rows."""
    enc = ClipEncoder.load("demo:tiny-clip")
    calls = []
    real = enc.model.encode_text
    enc.model.encode_text = lambda tokens: calls.append(len(tokens)) or real(tokens)
    first = enc.encode_texts(["a red circle", "a blue square", "a red circle"])
    again = enc.encode_texts(["a blue square", "a red circle"])
    assert calls == [2]
    assert np.array_equal(again, first[[1, 0]])
    enc.encode_texts(["a red circle", "a green disc"])
    assert calls == [2, 1]
