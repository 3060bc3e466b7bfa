"""Backend registry: ``training.backend`` in the config picks one."""

from __future__ import annotations

from trainer.backends.base import Backend


def get_backend(name: str) -> Backend:
    if name == "builtin":
        from trainer.backends.builtin import BuiltinBackend

        return BuiltinBackend()
    if name == "sd-scripts":
        from trainer.backends.sd_scripts import SdScriptsBackend

        return SdScriptsBackend()
    from shared.errors import EpochscopeError

    raise EpochscopeError(f"unknown training.backend {name!r}; use 'builtin' or 'sd-scripts'")
