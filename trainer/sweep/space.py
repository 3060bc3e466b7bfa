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
        values: dict[str, Any] = {}
        data = base.model_dump()
        for key, dim in space.items():
            kind, kwargs = _dimension(key, dim, data)
            suggest = {"categorical": trial.suggest_categorical, "int": trial.suggest_int,
                       "float": trial.suggest_float}[kind]
            values[key] = suggest(key, **kwargs)
        return values


def _dimension(key: str, dim: SearchDimension, data: dict[str, Any], source: object = "<sweep>"):
    """How one dimension is suggested: ("categorical" | "int" | "float", keyword arguments)."""
    try:
        current = get_dotted(data, key)
    except (KeyError, TypeError):
        raise ConfigError(source, "not a config field", field=f"sweep.space.{key}") from None
    if isinstance(current, dict):
        raise ConfigError(source, "is a section, not a config field", field=f"sweep.space.{key}")
    if dim.choices is not None:
        return "categorical", {"choices": dim.choices}
    as_int = dim.type == "int" or (dim.type == "auto" and isinstance(current, int) and not isinstance(current, bool))
    if as_int:
        return "int", {"low": int(dim.low), "high": int(dim.high), "log": dim.log, "step": int(dim.step or 1)}
    return "float", {"low": float(dim.low), "high": float(dim.high), "log": dim.log,
                     "step": None if dim.log else dim.step}


def check_space(space: dict[str, SearchDimension], enqueue: list[dict[str, Any]], base: RunConfig,
                source: object = "<sweep>") -> None:
    """Everything ``sample`` and the enqueued trials will need, checked before a sweep creates anything:
    every dimension is a config field with a range Optuna accepts, and every enqueued value is for a
    searched field, of the dimension's kind, and a value the config accepts. Raises one ConfigError
    naming the field."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from shared.config import config_from_dict, set_dotted

    data = base.model_dump()
    kinds = {}
    for key, dim in space.items():
        kind, kwargs = _dimension(key, dim, data, source)
        try:
            if kind == "categorical":
                CategoricalDistribution(kwargs["choices"])
            elif kind == "int":
                IntDistribution(**kwargs)
            else:
                FloatDistribution(**kwargs)
        except (ValueError, TypeError) as e:
            raise ConfigError(source, f"not a range Optuna accepts: {e}", field=f"sweep.space.{key}") from None
        kinds[key] = (kind, kwargs)
    for i, params in enumerate(enqueue):
        for key, value in params.items():
            where = f"sweep.enqueue[{i}].{key}"
            if key not in kinds:
                try:
                    get_dotted(data, key)
                    known = True
                except (KeyError, TypeError):
                    known = False
                raise ConfigError(source, "not a field of [sweep.space] (an enqueued value is only used for a "
                                  "searched field)" if known else "not a config field", field=where)
            kind, kwargs = kinds[key]
            if kind == "categorical" and value not in kwargs["choices"]:
                raise ConfigError(source, f"{value!r} is not one of the choices {kwargs['choices']}", field=where)
            if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(source, f"{value!r} is not an integer (the field is searched with integers)",
                                  field=where)
            if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(source, f"{value!r} is not a number", field=where)
        changed = base.model_dump()
        for key, value in params.items():
            set_dotted(changed, key, value)
        try:
            config_from_dict(changed, source)
        except ConfigError as e:
            raise ConfigError(source, e.problem, field=f"sweep.enqueue[{i}]" + (f".{e.field}" if e.field else "")
                              ) from None


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
