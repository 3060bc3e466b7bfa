"""Turn ``[sweep.space]`` into Optuna suggestions over dotted config fields."""

from __future__ import annotations

from typing import Any

from shared.config import RunConfig, SearchDimension, get_dotted
from shared.errors import ConfigError


def sample(trial, space: dict[str, SearchDimension], base: RunConfig) -> dict[str, Any]:
    """One value per dimension. Integer fields (e.g. network.dim) get integers."""
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


def build_sampler(cfg):
    import optuna

    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    return optuna.samplers.TPESampler(seed=cfg.seed)
