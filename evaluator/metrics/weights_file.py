"""A user-named local weights file for a metric model: safetensors only, and it must exist."""

from __future__ import annotations

from pathlib import Path

from shared.errors import EpochscopeError
from shared.naming import PICKLE_SUFFIXES


def local_weights_file(field: str, value: str, alternative: str = "") -> Path:
    """``value`` as an existing, non-pickle file; ``field`` names the config key in the error and
    ``alternative`` says what else the key accepts (e.g. "or an open_clip tag")."""
    path = Path(value).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise EpochscopeError(f"{field} {value}: pickle weight files are not loaded for safety; convert it to "
                              ".safetensors (safetensors.torch.save_file)")
    if not path.is_file():
        raise EpochscopeError(f"{field} {value}: no such file; give an existing .safetensors file{alternative}")
    return path
