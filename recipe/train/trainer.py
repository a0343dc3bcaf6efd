"""The training loop: the Goyal et al. recipe on a TFDS dataset, data-parallel over devices.

Read top to bottom: `build` resolves a config into the model, its initial variables, the
optimizer and the batch layout (no data loading); `describe` prints that; `train_and_evaluate`
checks the input, joins the cluster, opens the data, then `_train` restores or creates the
state and runs the loop with periodic evaluation, logging and checkpointing.
"""

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from recipe import masks, models, optim
from recipe.data import datasets, pipeline
from recipe.train import checkpoints, config_checks, plots, preemption, steps
from recipe.train.metrics import MetricsWriter, read_metrics

# Config fields that may change between a run and its resumption: they do not affect the result.
RESUMABLE_FIELDS = (
    "data_dir",
    "runner",
    "distributed",
    "log_every_steps",
    "sync_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "progress_bar",
    "eval_batch_size",
)


class ConfigError(ValueError):
    """A config field, the work dir or the dataset is not usable; raised before any compile."""


class NonFiniteLossError(RuntimeError):
    """The loss or an update became NaN/inf; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class Setup:
    """A config resolved against the devices: everything but data and compiled functions."""

    spec: datasets.DatasetSpec
    model: models.ResNet
    variables: Any
    optimizer: optim.Optimizer
    steps_per_epoch: int
    total_steps: int
    per_device_batch: int
    device_count: int
    image_shape: tuple[int, int, int]


def build(config: ml_collections.ConfigDict, device_count: int) -> Setup:
    """Validates `config` and resolves the model, initial variables, optimizer and batch layout."""
    config_checks.check_config(config, device_count)
    spec = datasets.get_dataset_spec(config.dataset)
    size = config.image_size
    image_shape = (size, size, spec.image_shape[2]) if size else spec.image_shape
    bn = config.bn
    model = models.create_model(
        config.model,
        num_classes=spec.num_classes,
        num_filters=config.num_filters,
        bn_axis_name=steps.AXIS if bn.scope == "global" else None,
        ghost_batch_size=bn.ghost_batch_size if bn.scope == "ghost" else None,
        bn_momentum=bn.momentum,
        dtype=jax.numpy.dtype(config.dtype),
        zero_init_last_bn=config.zero_init_last_bn,
    )
    variables = steps.init_variables(model, image_shape, config.seed)
    steps_per_epoch = pipeline.steps_per_epoch(spec.num_train, config.batch_size)
    optimizer = optim.build_optimizer(
        variables,
        **config.optimizer,
        batch_size=config.batch_size,
        steps_per_epoch=steps_per_epoch,
        epochs=config.num_epochs,
        accumulation_steps=config.accumulation_steps,
        weight_decay_in_loss=True,  # same updates as decay in the optimizer, faster (BENCHMARKS §1)
    )
    return Setup(
        spec=spec,
        model=model,
        variables=variables,
        optimizer=optimizer,
        steps_per_epoch=steps_per_epoch,
        total_steps=config.num_epochs * steps_per_epoch,
        per_device_batch=config.batch_size // device_count,
        device_count=device_count,
        image_shape=image_shape,
    )


def describe(config: ml_collections.ConfigDict, workdir: pathlib.Path | None = None) -> str:
    """The resolved recipe as text; with `workdir`, also saves the lr schedule as a PNG there."""
    setup = build(config, jax.device_count())
    schedule = setup.optimizer.schedule
    report = masks.decay_report(setup.variables, decay_bias=config.optimizer.decay_bias)
    bn = config.bn
    bn_scope = {
        "device": f"per device, over {setup.per_device_batch} examples (Goyal §2.3)",
        "global": f"across all devices, over {config.batch_size} examples",
        "ghost": f"ghost batches of {bn.ghost_batch_size} examples within each device",
    }[bn.scope]
    lines = [
        f"dataset            {setup.spec.name}: {setup.spec.num_train} train / "
        f"{setup.spec.num_test} test, {setup.spec.num_classes} classes, images {setup.image_shape}",
        f"model              {config.model} (width {config.num_filters}, dtype {config.dtype}, "
        f"zero-γ last BN {config.zero_init_last_bn})",
        f"global batch       {config.batch_size} = {setup.device_count} device"
        f"{'s' if setup.device_count > 1 else ''} × "
        f"{setup.per_device_batch} per device"
        + (
            f" (× {config.accumulation_steps} accumulated)" if config.accumulation_steps > 1 else ""
        ),
        f"learning rate      {schedule.base_lr} × {config.batch_size * config.accumulation_steps}"
        f" / {config.optimizer.base_batch_size} = {schedule.peak_lr:g} (linear scaling rule)",
        "warmup             none"
        if schedule.warmup == "none"
        else f"warmup             {schedule.warmup}, {schedule.warmup_steps} updates "
        f"({config.optimizer.warmup_epochs} epochs) from {schedule.warmup_lr:g}",
        f"decay              {schedule.decay}"
        + (
            f" ×{schedule.decay_factor} at updates {list(schedule.decay_boundaries)}"
            if schedule.decay == "step"
            else ""
        ),
        f"updates            {schedule.total_steps} ({config.num_epochs} epochs × "
        f"{schedule.steps_per_epoch} per epoch)",
        f"optimizer          SGD, momentum {config.optimizer.momentum}, nesterov "
        f"{config.optimizer.nesterov}, weight decay {config.optimizer.weight_decay} "
        "(coupled L2, in the loss)",
        f"batch norm         {bn_scope}, momentum {bn.momentum}",
        f"label smoothing    {config.label_smoothing}",
        f"runner             {config.runner}",
        f"weight decay on    {len(report.decayed)} tensors: {', '.join(report.decayed)}",
        f"no weight decay on {len(report.not_decayed)} tensors: {', '.join(report.not_decayed)}",
    ]
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "lr_schedule.png"
        plots.plot_schedule(schedule, schedule.total_steps, schedule.steps_per_epoch, path)
        lines.append(f"schedule plot      {path}")
    return "\n".join(lines)


def run_identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config fields a checkpoint must agree with to be resumed (JSON-normalised)."""
    fields = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_FIELDS}
    return json.loads(json.dumps(fields))


def initialize_distributed(distributed: ml_collections.ConfigDict) -> None:
    """Joins the `jax.distributed` cluster if the config asks for it (before any jax call).

    With `coordinator_address`, `num_processes` and `process_id` set, uses them (GPU hosts,
    several processes on one machine); with them all None, lets JAX detect the cluster (Cloud
    TPU pod slices, SLURM).
    """
    if not distributed.enabled or jax.distributed.is_initialized():
        return
    jax.distributed.initialize(
        coordinator_address=distributed.coordinator_address,
        num_processes=distributed.num_processes,
        process_id=distributed.process_id,
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains and evaluates; resumes from the latest checkpoint in `workdir` if there is one.

    Returns:
      The final evaluation metrics (accuracy, loss, top5 when classes > 10).

    Raises:
      ConfigError: bad config, work dir or dataset, before anything is compiled or loaded.
      checkpoints.IncompatibleCheckpointError: `workdir` holds another config's checkpoints.
      NonFiniteLossError: the loss diverged (with `on_nonfinite='stop'`).
      preemption.Preempted: SIGTERM arrived; a checkpoint was written first.
    """
    # ---- Cluster, devices and bad input: everything is checked before compiling or loading.
    initialize_distributed(config.distributed)
    workdir_path = pathlib.Path(workdir)
    try:
        config_checks.check_config(config, jax.device_count())
        config_checks.check_workdir(workdir_path)
        spec = datasets.get_dataset_spec(config.dataset)
        train_source = datasets.load_source(config.dataset, spec.train_split, config.data_dir)
        test_source = datasets.load_source(config.dataset, spec.test_split, config.data_dir)
    except (ValueError, datasets.DatasetNotPreparedError) as error:
        raise ConfigError(str(error)) from error
    with preemption.stop_on_sigterm() as stop_request:
        return _train(config, workdir_path, train_source, test_source, stop_request)


def _train(
    config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    train_source: Any,
    test_source: Any,
    stop_request: preemption.StopRequest,
) -> dict[str, float]:
    # ---- The resolved recipe, and the state: fresh or restored from the latest checkpoint.
    runner = steps.RUNNERS[config.runner]()
    setup = build(config, jax.device_count())
    is_writer = jax.process_index() == 0
    state = steps.TrainState.create(setup.variables, setup.optimizer.tx)
    checkpoint_dir = workdir / "checkpoints"
    checkpointer = checkpoints.Checkpointer(checkpoint_dir, keep=config.keep_checkpoints)
    identity = run_identity(config)
    restored = checkpointer.restore_latest(state, identity)
    start_step, last_checkpoint = 0, None
    if restored is not None:
        start_step, state = restored
        last_checkpoint = start_step
    writer = MetricsWriter(workdir, enabled=is_writer)
    writer.drop_after(start_step)

    # ---- Compiled, device-mapped functions.
    train_step = runner.map(
        functools.partial(
            steps.train_step,
            model=setup.model,
            tx=setup.optimizer.tx,
            label_smoothing=config.label_smoothing,
            skip_nonfinite=config.on_nonfinite == "skip",
            loss_penalty=setup.optimizer.loss_penalty,
        ),
        donate_argnums=(0,),
    )
    eval_step = runner.map(
        functools.partial(steps.eval_step, model=setup.model, num_classes=setup.spec.num_classes)
    )
    average_batch_stats = runner.map(steps.average_batch_stats, donate_argnums=(0,))
    device_state = runner.replicate(state)
    layout = dict(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        local_device_count=jax.local_device_count(),
        image_size=config.image_size,
    )

    def evaluate(device_state) -> dict[str, float]:
        sums: dict[str, float] = {}
        for batch in pipeline.eval_batches(
            test_source, setup.spec, global_batch=config.eval_batch_size, **layout
        ):
            out = steps.fetch_first(eval_step(device_state, runner.put(_model_inputs(batch))))
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        count = sums.pop("count")
        result = {"loss": sums.pop("loss") / count, "accuracy": sums.pop("top1") / count}
        result.update({key: value / count for key, value in sums.items()})
        return result

    def check_finite(step: int, fetched: dict[str, float]) -> None:
        if fetched["finite"] or config.on_nonfinite == "skip":
            return
        progress.close()
        kept = (
            f"step {last_checkpoint} in {checkpoint_dir}, left intact"
            if last_checkpoint is not None
            else "none (no checkpoint had been written)"
        )
        raise NonFiniteLossError(
            f"non-finite loss or update at step {step} (loss {fetched['loss']}); the last good "
            f"checkpoint is {kept}. Lower the learning rate, or set --config.on_nonfinite=skip "
            "to skip such updates."
        )

    # ---- The loop.
    host_batches = pipeline.train_batches(
        train_source,
        setup.spec,
        seed=config.seed,
        global_batch=config.batch_size,
        start_step=start_step,
        num_steps=setup.total_steps - start_step,
        augment=config.augment,
        **layout,
    )
    progress = tqdm.tqdm(
        total=setup.total_steps,
        initial=start_step,
        disable=not (config.progress_bar and is_writer),
        unit="step",
        dynamic_ncols=True,
    )
    pending: list[tuple[int, Any]] = []  # (step, device metrics) not fetched yet
    window: list[dict[str, float]] = []  # fetched metrics since the last log record
    # Throughput: steps dispatched since `timer_start`, which restarts after each log record,
    # evaluation and checkpoint so that images/s counts training time only.
    timer_start, timed_steps = time.perf_counter(), 0
    eval_every = config.eval_every_epochs * setup.steps_per_epoch
    final_eval: dict[str, float] = {}
    step = start_step
    for batch in runner.prefetch(map(_model_inputs, host_batches)):
        device_state, metrics = train_step(device_state, batch)
        step += 1
        timed_steps += 1
        pending.append((step, metrics))
        progress.update(1)
        is_last = step == setup.total_steps
        log_now = step % config.log_every_steps == 0 or is_last
        eval_now = step % eval_every == 0 or is_last
        checkpoint_now = step % config.checkpoint_every_steps == 0 or is_last
        sync_now = log_now or eval_now or checkpoint_now or len(pending) >= config.sync_every_steps
        # One process checks SIGTERM every step; several agree on it at their common sync points.
        if not sync_now and not (jax.process_count() == 1 and stop_request.local()):
            continue

        # Sync: fetching the metrics waits for the devices, which bounds the queue of steps with
        # collectives (CPU collectives deadlock when too many are queued).
        for pending_step, device_metrics in pending:
            fetched = {k: float(v) for k, v in steps.fetch_first(device_metrics).items()}
            check_finite(pending_step, fetched)
            window.append(fetched)
        pending.clear()
        stop = stop_request.agreed()

        if log_now and window:
            record = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
            record["learning_rate"] = window[-1]["learning_rate"]
            record["images_per_sec"] = (
                timed_steps * config.batch_size / (time.perf_counter() - timer_start)
            )
            record["epoch"] = step / setup.steps_per_epoch
            writer.write(step, "train", record)
            progress.set_postfix(
                loss=f"{record['loss']:.3f}", img_s=f"{record['images_per_sec']:.0f}"
            )
            window.clear()
            timer_start, timed_steps = time.perf_counter(), 0

        if eval_now or checkpoint_now or stop:
            # Per-device BN running statistics are averaged before they are used or saved; the
            # training forward pass never reads them, so the trajectory is unchanged.
            device_state = average_batch_stats(device_state)
        if eval_now:
            final_eval = evaluate(device_state)
            writer.write(step, "eval", {**final_eval, "epoch": step / setup.steps_per_epoch})
            progress.write(
                f"epoch {step / setup.steps_per_epoch:g}: test accuracy "
                f"{100 * final_eval['accuracy']:.2f}%, loss {final_eval['loss']:.4f}"
            )
        if checkpoint_now or stop:
            host_state = steps.fetch_first(device_state)
            _check_same_on_all_processes(host_state.params)
            checkpointer.save(step, host_state, identity)
            last_checkpoint = step
        if stop:
            progress.close()
            raise preemption.Preempted(step, str(checkpoint_dir))
        if eval_now or checkpoint_now:
            timer_start, timed_steps = time.perf_counter(), 0
    progress.close()

    # ---- Results.
    if not final_eval:  # resumed from the checkpoint of the last step
        final_eval = evaluate(device_state)
    if is_writer:
        plots.plot_run(read_metrics(workdir), setup.steps_per_epoch, workdir / "curves.png")
    writer.close()
    checkpointer.close()
    return final_eval


def _check_same_on_all_processes(params: Any) -> None:
    """Fails loudly if the processes' weights have drifted apart (they should be identical)."""
    if jax.process_count() > 1:
        # float32: the all-gather runs without x64, and a float64 array would come back rounded.
        fingerprint = np.array(
            [np.sum(np.abs(x), dtype=np.float64) for x in jax.tree.leaves(params)], np.float32
        )
        multihost_utils.assert_equal(fingerprint, "the processes' parameters differ")


def _model_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays the steps read (drops the loader's bookkeeping such as 'index')."""
    return {k: v for k, v in batch.items() if k in ("image", "label", "mask")}
