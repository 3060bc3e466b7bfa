"""Load ``model.base`` as a diffusers pipeline, offline: the one loader the evaluator and the built-in
trainer share.

``model.base`` is a diffusers folder (``from_pretrained``), a single-file ``.safetensors`` checkpoint in
the original (ldm) layout (``from_single_file``, with the component configs and tokenizers of the
family's published model from ``shared.base_configs``, so nothing is fetched from the hub), or a
``demo:`` name. Pickle checkpoints (``.ckpt``, ``.pt``, ``.bin``...) are refused, never unpickled. Every
error is an ``EpochscopeError`` naming ``model.base`` and the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.config import Family
from shared.demo_assets import resolve_demo
from shared.errors import EpochscopeError
from shared.model_family import FAMILY_NAMES, family_of_base, family_of_checkpoint_keys

PIPELINE_CLASSES: dict[Family, str] = {"sd1": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
_SD2_TEXT_ENCODER_KEY = "cond_stage_model.model."  # SD 2.x's OpenCLIP-H text encoder (single-file layout)


class BaseModelError(EpochscopeError):
    """``model.base`` cannot be loaded; the message names the value and the path."""

    def __init__(self, base: str, path: Path | str, problem: str) -> None:
        where = f"model.base {base!r}" + (f" ({path})" if str(path) != base else "")
        super().__init__(f"{where}: {problem}")


def pipeline_class(family: Family) -> type:
    """``StableDiffusionPipeline`` for ``"sd1"``, ``StableDiffusionXLPipeline`` for ``"sdxl"``."""
    import diffusers

    return getattr(diffusers, PIPELINE_CLASSES[family])


def load_base_pipeline(base: str, family: Family | None = None, dtype: Any = None, *,
                       config_dir: Path | str | None = None, safety_checker: bool = True) -> Any:
    """The base model as a ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``, on the CPU.

    Args:
        base: ``model.base``: a diffusers folder, a single-file ``.safetensors`` checkpoint, or a ``demo:``
            name.
        family: ``"sd1"`` or ``"sdxl"`` (``RunConfig.model.family``); None: told from the weights. A family
            the weights contradict is refused.
        dtype: the torch dtype to load the weights in; None: as diffusers defaults (float32).
        config_dir: single files only: the diffusers-layout config folder to build the components from;
            default the family's published model (``shared.base_configs.config_folder``). Tests pass a
            tiny model's.
        safety_checker: False: leave out the safety checker an SD 1.x diffusers folder may hold (training
            never needs it); True: load it where there is one (the evaluator records its NSFW flags).

    Returns:
        The pipeline, with its progress bar off; the caller moves it to a device.

    Raises:
        BaseModelError: missing path, pickle file, a folder that is no diffusers pipeline, a family
            mismatch, or any failure to load (with diffusers' own message).
    """
    path = Path(resolve_demo(base))
    if path.is_dir():
        detected = _folder_family(base, path)
        loader = "from_pretrained"
    elif path.is_file():
        if path.suffix != ".safetensors":
            raise BaseModelError(base, path, "only .safetensors checkpoints or diffusers folders are loaded "
                                 "(pickle checkpoints such as .ckpt are never unpickled); convert it to "
                                 ".safetensors first")
        detected = _single_file_family(base, path)
        loader = "from_single_file"
    else:
        raise BaseModelError(base, path, "not found: give a diffusers folder, a single-file .safetensors "
                             "checkpoint, or 'demo:tiny' / 'demo:tiny-sdxl'")
    if family is not None and detected is not None and family != detected:
        raise BaseModelError(base, path, f"model.family is {family!r} ({FAMILY_NAMES[family]}), but this is an "
                             f"{FAMILY_NAMES[detected]} model; fix model.family or leave it out")
    family = family or detected or "sd1"
    cls = pipeline_class(family)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs[_dtype_keyword()] = dtype
    if family == "sd1" and not safety_checker:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    try:
        if loader == "from_pretrained":
            pipe = cls.from_pretrained(str(path), **kwargs)
        else:
            from shared.base_configs import config_folder

            config = Path(config_dir) if config_dir is not None else config_folder(family)
            pipe = cls.from_single_file(str(path), config=str(config), **kwargs)
    except EpochscopeError:
        raise
    except Exception as e:  # noqa: BLE001 - diffusers and transformers raise many kinds here
        raise BaseModelError(base, path, f"cannot load the {FAMILY_NAMES[family]} pipeline offline "
                             f"({type(e).__name__}: {e})") from None
    if loader == "from_pretrained":
        _refuse_text_encoders_left_random(base, path, pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _dtype_keyword() -> str:
    """diffusers 0.40 renamed ``torch_dtype`` to ``dtype`` (the old name warns, and goes in 1.0); before 0.40 a
    ``dtype`` keyword is ignored with a warning, and the pipeline loads in float32: twice the memory on a GPU."""
    import diffusers

    major, minor = (int(part) for part in diffusers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (0, 40) else "torch_dtype"


def _refuse_text_encoders_left_random(base: str, path: Path, pipe: Any) -> None:
    """transformers loads a text encoder whose file names its weights differently (transformers 5 writes no
    ``text_model.`` level; transformers 4 reads only that) as random, with a warning in a long log. Samples
    from it look like a bad LoRA, so the folder is refused instead."""
    import transformers

    from shared.text_encoder_files import TEXT_ENCODER_DIRS, weights_left_random

    for sub in TEXT_ENCODER_DIRS:
        model = getattr(pipe, sub, None)
        if model is None or not (path / sub).is_dir():
            continue
        left = weights_left_random(model, path / sub)
        if left:
            raise BaseModelError(base, path, f"transformers {transformers.__version__} did not load {sub}/'s "
                                 f"weights (it left {', '.join(left)} random): the file names them in a way this "
                                 "transformers does not read (transformers 5 saves them without 'text_model.', "
                                 "which transformers 4 needs); load it with transformers 5 or later, or save "
                                 "the folder again with the transformers you use")


def _folder_family(base: str, path: Path) -> Family | None:
    if not (path / "model_index.json").is_file():
        raise BaseModelError(base, path, "is a folder but not a diffusers pipeline (no model_index.json)")
    return family_of_base(str(path))


def _single_file_family(base: str, path: Path) -> Family:
    from shared.safetensors_info import inspect

    info = inspect(path)
    if not info.is_complete:
        raise BaseModelError(base, path, f"is not a complete .safetensors file ({info.reason})")
    names = info.tensor_names
    if any(n.startswith(_SD2_TEXT_ENCODER_KEY) for n in names):
        raise BaseModelError(base, path, "is an SD 2.x single-file checkpoint, which is loaded from a diffusers "
                             "folder only; convert it once (diffusers' convert_original_stable_diffusion_to_"
                             "diffusers.py) and point model.base at the folder")
    family = family_of_checkpoint_keys(names)
    if family is None:
        raise BaseModelError(base, path, "holds no SD 1.x or SDXL checkpoint (no model.diffusion_model. / "
                             "conditioner. / cond_stage_model. tensors); is it a LoRA or another architecture?")
    return family
