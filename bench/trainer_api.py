"""The trainer application's names the benchmarks use, imported in this module only.

Every benchmark measures the project's own trainer (`train/`, run from a checkout) and its
configs (`configs/`): the rest of `bench/` reaches them through this module, so that it lists
everything `bench/` depends on in the trainer, and a renamed trainer module is re-pointed here.

Importing it imports jax and the trainer: the benchmark drivers, which only start worker
processes, import it inside the functions their workers run.
"""

from typing import Any

import ml_collections

from configs import default, imagenet_resnet50_goyal
from train import inputs, preemption, resolve, runners, sharpness, steps
from train import loop as _loop
from train.checkpoints import restore_checkpoint
from train.evaluation import Evaluator
from train.loop import NonFiniteLossError, train_and_evaluate
from train.metrics import MetricsWriter, read_metrics

__all__ = [
    "Evaluator",
    "MetricsWriter",
    "NonFiniteLossError",
    "config_for",
    "imagenet_resnet50_goyal",
    "inputs",
    "preemption",
    "read_metrics",
    "resolve",
    "restore_checkpoint",
    "runners",
    "sharpness",
    "steps",
    "train_and_evaluate",
    "write_metrics_with",
]


def config_for(**overrides: Any) -> ml_collections.ConfigDict:
    """configs/default.py with dotted-key overrides (e.g. {'optimizer.base_lr': 0.2}).

    >>> config_for(**{"optimizer.base_lr": 0.2}).optimizer.base_lr
    0.2
    """
    config = default.get_config()
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def write_metrics_with(writer: type[MetricsWriter]) -> None:
    """Makes `train_and_evaluate` write its metrics through `writer`, a `MetricsWriter` subclass,
    in this process (a timing worker notes the clock at each record; the records are the same)."""
    _loop.MetricsWriter = writer
