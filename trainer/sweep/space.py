"""Turn ``[sweep.space]`` into Optuna suggestions over dotted config fields."""

from __future__ import annotations

import warnings
import zlib
from typing import Any

from shared.config import RunConfig, SearchDimension, get_dotted
from shared.errors import ConfigError


def sample(trial, space: dict[str, SearchDimension], base: RunConfig) -> dict[str, Any]:
    """One value per dimension. Integer fields (e.g. network.dim) get integers."""
    with warnings.catch_warnings():
        # An enqueued value outside the range is intended (e.g. a planted bad setting).
        warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
        return _sample(trial, space, base)


def _sample(trial, space: dict[str, SearchDimension], base: RunConfig) -> dict[str, Any]:
    data = base.model_dump()
    values: dict[str, Any] = {}
    for key, dim in space.items():
        try:
            current = get_dotted(data, key)
        except (KeyError, TypeError):
            raise ConfigError("<sweep>", "not a config field", field=f"sweep.space.{key}") from None
        if dim.choices is not None:
            values[key] = trial.suggest_categorical(key, dim.choices)
            continue
        as_int = dim.type == "int" or (dim.type == "auto" and isinstance(current, int) and not isinstance(current, bool))
        if as_int:
            values[key] = trial.suggest_int(key, int(dim.low), int(dim.high), log=dim.log, step=int(dim.step or 1))
        else:
            values[key] = trial.suggest_float(key, float(dim.low), float(dim.high), log=dim.log,
                                              step=None if dim.log else dim.step)
    return values


def build_pruner(cfg):
    import optuna

    p = cfg.pruner
    if p.type == "none":
        return optuna.pruners.NopPruner()
    if p.type == "median" and p.margin > 0:
        from trainer.sweep.pruners import margin_median_pruner

        return margin_median_pruner(p.margin, p.n_startup_trials, p.n_warmup_steps)
    if p.type == "percentile":
        inner = optuna.pruners.PercentilePruner(p.percentile, n_startup_trials=p.n_startup_trials,
                                                n_warmup_steps=p.n_warmup_steps)
    else:
        inner = optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.type == "patient":
        return optuna.pruners.PatientPruner(inner, patience=p.patience, min_delta=p.min_delta)
    return inner


def sampler_seed(seed: int | None, trials_so_far: int, worker: str | None = None) -> int | None:
    """The sampler's seed for this sweep process.

    A resumed sweep must not replay the random start of the first run (it would sample the same values
    again), so the seed moves on with the trials already in the study. Workers sharing one study start
    together with the same count, so on a shared storage the worker's name (host:pid) is mixed in.
    """
    if seed is None:
        return None
    mixed = seed + trials_so_far
    if worker is not None:
        mixed ^= zlib.crc32(worker.encode())
    return mixed % 2**32


def build_sampler(cfg, seed: int | None):
    import optuna

    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)
