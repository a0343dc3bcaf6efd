"""One run of a small-scale Table 1 (`bench/table1.py`), inside a worker process: the trainer
trains it, then its test error is measured with BatchNorm statistics recomputed on the training
set (`precise_bn_test_error`).

BN running averages lag when an epoch has few steps at a high learning rate, which would blur
the comparison; "precise BN" here is the mean of per-batch means and variances, over batches
the size of one device's training batch, without augmentation.
"""

import pathlib
import shutil
import statistics

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bench import trainer_api
from recipe.data import pipeline


def train(
    config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    *,
    num_train: int,
    records_per_epoch: int,
) -> None:
    """Trains `config` from scratch in `workdir` (emptied first) with the trainer's own
    `train_and_evaluate`: about `records_per_epoch` training records per epoch of `num_train`
    examples (every step at the largest batches), and the trainer's running-BN evaluation once,
    at the end. Raises the trainer's `NonFiniteLossError` if the loss diverges."""
    steps_per_epoch = num_train // config.batch_size
    config.log_every_steps = max(1, steps_per_epoch // records_per_epoch)
    config.eval_every_epochs = config.num_epochs
    if workdir.exists():
        shutil.rmtree(workdir)
    trainer_api.train_and_evaluate(config, str(workdir))


def train_records(workdir: pathlib.Path) -> list[dict]:
    """The training records the trainer logged in `workdir` (each averaged over its interval)."""
    return [r for r in trainer_api.read_metrics(workdir) if r["kind"] == "train"]


def last_epoch_mean(epochs_and_errors: list[tuple[float, float]], num_epochs: int) -> float:
    """The mean training error of the records in the last epoch: the 'train' column.

    >>> last_epoch_mean([(1.0, 30.0), (1.5, 20.0), (2.0, 10.0)], 2)
    15.0
    """
    return statistics.mean(error for epoch, error in epochs_and_errors if epoch > num_epochs - 1)


def precise_bn_test_error(
    config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    sources: tuple | None = None,
    max_examples: int | None = None,
) -> dict:
    """Test error of the final checkpoint with BN statistics recomputed on the training set
    (its first `max_examples`, in whole batches of the run's size, at least one; all of it by
    default). `sources`: the (train, test) sources to read, by default the trainer's
    (`inputs.open_data`)."""
    setup = trainer_api.resolve.resolve(config, 1)
    step, state = trainer_api.restore_checkpoint(setup, str(workdir))
    model, spec = setup.model, setup.spec
    momentum = config.bn.momentum

    @jax.jit
    def batch_statistics(params, images):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, state.batch_stats)
        _, new = model.apply(
            {"params": params, "batch_stats": zeros}, images, train=True, mutable=["batch_stats"]
        )
        return jax.tree_util.tree_map(lambda x: x / (1 - momentum), new["batch_stats"])

    @jax.jit
    def predictions(params, batch_stats, images):
        logits = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
        return jnp.argmax(logits, -1)

    # The trainer's sources by default: with `train_examples`, its class-balanced subset.
    train_source, test_source = sources or trainer_api.inputs.open_data(setup)
    layout = dict(process_index=0, process_count=1, local_device_count=1)
    bn_batch = config.batch_size
    num_batches = pipeline.steps_per_epoch(len(train_source), bn_batch)
    if max_examples is not None:
        num_batches = max(1, min(num_batches, max_examples // bn_batch))
    sums = None
    for batch in pipeline.train_batches(
        train_source,
        spec,
        seed=config.seed,
        global_batch=bn_batch,
        num_steps=num_batches,
        augment=False,
        image_size=config.image_size,
        **layout,
    ):
        stats = batch_statistics(state.params, batch["image"][0])
        sums = stats if sums is None else jax.tree_util.tree_map(jnp.add, sums, stats)
    batch_stats = jax.tree_util.tree_map(lambda x: x / num_batches, sums)

    def error(stats) -> float:
        wrong = count = 0
        for batch in pipeline.eval_batches(
            test_source,
            spec,
            global_batch=config.eval_batch_size,
            image_size=config.image_size,
            **layout,
        ):
            pred = np.asarray(predictions(state.params, stats, batch["image"][0]))
            mask = batch["mask"][0] > 0
            wrong += int(np.sum((pred != batch["label"][0]) & mask))
            count += int(mask.sum())
        return 100.0 * wrong / count

    kernels = [x for path, x in jax.tree_util.tree_leaves_with_path(state.params) if x.ndim == 4]
    return {
        "step": step,
        # BN makes every conv scale-invariant: its effective learning rate is η / ‖W‖².
        "conv_weight_norm": float(jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in kernels))),
        "test_error_precise_bn": error(batch_stats),
        "test_error_running_bn": error(state.batch_stats),
    }
