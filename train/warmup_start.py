"""The warmup started at the measured stability edge (`optimizer.warmup_start='stability_edge'`).

Kalra & Barkeshli 2024 ("Why Warmup the Learning Rate? Underlying Mechanisms and Improvements",
NeurIPS) start the warmup at the largest stable rate of the initialisation instead of at a fixed
fraction of the target: η_init = threshold / λ₀, λ₀ the loss's sharpness at initialisation and
the threshold the optimizer's (`recipe.stability_threshold`: (2 + 2β)/(1 + 2β) for the recipe's
Nesterov SGD in optax's form). Before the first step the run measures λ₀ on its sharpness
probe's fixed batch (the first global batch, unaugmented; `train.sharpness`) with the initial
weights, and its gradual warmup starts at min(η_init, kη). λ₀ is stored in the work dir
(`START_FILE`) at the first start and read, not measured again, on every resume: a resumed run
keeps the schedule it started with, whatever the runner's rounding.
"""

import dataclasses
import json
from typing import Any

import jax
from etils import epath

from recipe import sharpness as recipe_sharpness
from train import sharpness, steps
from train.resolve import Setup, run_optimizer

START_FILE = "warmup_start.json"
KIND = "warmup_start"  # the record's kind in metrics.jsonl, its tags' prefix in TensorBoard


def at_stability_edge(
    setup: Setup, workdir: epath.Path, train_source: Any
) -> tuple[Setup, dict[str, float] | None]:
    """`setup` with its warmup started at the stability edge (unchanged unless
    `optimizer.warmup_start='stability_edge'`), and the measurement's record when it was made
    now (None when read from `START_FILE` or not asked for)."""
    config = setup.config
    if config.optimizer.warmup_start != "stability_edge":
        return setup, None
    path = workdir / START_FILE
    measured = None
    if path.exists():
        stored = json.loads(path.read_text())
        sharpness_0 = stored["sharpness"]
    else:
        measured = _measure(setup, train_source)
        sharpness_0 = measured["sharpness"]
        if jax.process_index() == 0:
            path.write_text(json.dumps(measured, indent=1) + "\n")
    edge = recipe_sharpness.stability_edge_learning_rate(
        sharpness_0, config.optimizer.momentum, config.optimizer.nesterov
    )
    optimizer = run_optimizer(config, setup.layout, setup.abstract_variables, edge)
    schedule = optimizer.schedule
    if measured is not None:
        measured = {
            **measured,
            "edge_learning_rate": edge,
            "warmup_init_lr": schedule.warmup_lr,
            "peak_lr": schedule.peak_lr,
        }
    return dataclasses.replace(setup, optimizer=optimizer), measured


def _measure(setup: Setup, train_source: Any) -> dict[str, float]:
    """λ₀ and its residual, of the initial weights on the probe's fixed batch."""
    variables = steps.init_variables(setup.model, setup.image_shape, setup.seed)
    state = steps.TrainState.create(variables, setup.optimizer.tx, setup.noise_scale_ema)
    runner = setup.runner()
    record = sharpness.SharpnessProbe(setup, runner, train_source)(runner.place(state), 0)
    return {"sharpness": record["sharpness"], "sharpness_residual": record["sharpness_residual"]}


def message(record: dict[str, float]) -> str:
    """The printed line of a measurement."""
    return (
        f"warmup starts at the stability edge: λ₀ = {record['sharpness']:.4g} at initialisation "
        f"(residual {record['sharpness_residual']:.1e}), threshold / λ₀ = "
        f"{record['edge_learning_rate']:.4g}; the warmup goes from {record['warmup_init_lr']:.4g} "
        f"to {record['peak_lr']:.4g}"
    )
