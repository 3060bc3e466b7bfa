"""Optuna sweeps: each trial is a trainer run in trial_NNNN/, pruned from the evaluator's scores."""
