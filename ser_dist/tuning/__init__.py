"""Hyperparameter sweeps on Ray Tune (`ser-dist tune`); Ray Tune and Optuna load only when a sweep runs."""

from ser_dist.tuning.sweep import SearchSpace, TuneConfig, best_train_config, run_sweep

__all__ = ["SearchSpace", "TuneConfig", "best_train_config", "run_sweep"]
