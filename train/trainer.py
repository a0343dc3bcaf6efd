"""The training loop: the Goyal et al. recipe on a TFDS dataset, data-parallel over devices.

Read top to bottom: `train_and_evaluate` resolves the config (`resolve.resolve`: every field
checked, the model, optimizer and batch layout computed, nothing compiled), opens the data and
the work dir, then `_train` restores the latest checkpoint (after checking that it belongs to
this run) or initialises the state, and runs the loop with periodic evaluation, logging and
checkpointing. `describe` prints the resolved recipe; `evaluate` scores a work dir's latest
checkpoint without training.
"""

import dataclasses
import functools
import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from etils import epath
from jax.experimental import multihost_utils

from configs import default
from recipe.data import datasets, pipeline
from train import checkpoints, inputs, plots, preemption, runners, sharpness, steps
from train.describe import recipe_text
from train.metrics import MetricsWriter, read_metrics
from train.resolve import ConfigError, Setup, check_fields, flat_fields, resolve

__all__ = [
    "ConfigError",
    "Evaluator",
    "NonFiniteLossError",
    "SavedRun",
    "describe",
    "evaluate",
    "load_run",
    "restore_checkpoint",
    "run_identity",
    "train_and_evaluate",
]

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
    "data_workers",
    "data_in_memory",
    "device_prefetch",
)
CONFIG_FILE = "config.json"


class NonFiniteLossError(RuntimeError):
    """The loss, an update or the BN statistics became NaN/inf; the last good checkpoint is
    kept."""


def run_identity(config: ml_collections.ConfigDict | dict[str, Any]) -> dict[str, Any]:
    """The config fields a checkpoint must agree with to be resumed (JSON-normalised)."""
    values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    fields = {k: v for k, v in values.items() if k not in RESUMABLE_FIELDS}
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


def describe(config: ml_collections.ConfigDict, workdir: str | None = None) -> str:
    """The resolved recipe as text (`--describe`); with `workdir`, also saves the learning-rate
    schedule there as `lr_schedule.png`. Rejects exactly the inputs training rejects that do
    not need the data or the work dir."""
    check_fields(config)
    setup = resolve(config, jax.device_count())
    text = recipe_text(setup)
    if workdir is not None:
        path = _create_workdir(workdir) / "lr_schedule.png"
        schedule = setup.optimizer.schedule
        plots.plot_schedule(schedule, schedule.total_steps, schedule.steps_per_epoch, path)
        text += f"\n{'schedule plot':<18} {path}"
    return text


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Scores the latest checkpoint of `workdir` on the test split, without training.

    The config must be the run's own (as for resuming). Writes nothing (a checkpoint that
    cannot be read is moved aside, as a resumed run would).

    Returns:
      {'step': the checkpoint's step, 'loss', 'accuracy' (and 'top5' for > 10 classes)}.

    Raises:
      ConfigError: bad config or dataset, or `workdir` holds no checkpoint.
      checkpoints.IncompatibleCheckpointError: the checkpoints belong to another run.
    """
    check_fields(config)
    initialize_distributed(config.distributed)
    setup = resolve(config, jax.device_count())
    train_source, test_source = _open_data(setup)
    step, state = restore_checkpoint(setup, workdir)
    runner = setup.runner()
    evaluator = Evaluator(setup, runner, train_source, test_source)
    _, result = evaluator(runner.replicate(state), step)
    return {"step": step, **result}


def restore_checkpoint(
    setup: Setup, workdir: str, step: int | None = None
) -> tuple[int, steps.TrainState]:
    """(step, host train state) of the latest (or the given) checkpoint of `workdir`, after
    checking that it belongs to the run `setup` describes.

    Raises:
      ConfigError: `workdir` holds no (readable) checkpoint, or not the requested step.
      checkpoints.IncompatibleCheckpointError: the checkpoints belong to another run.
    """
    checkpoint_dir = epath.Path(workdir) / "checkpoints"
    if not checkpoint_dir.exists():
        raise ConfigError(f"{checkpoint_dir} does not exist: no checkpoint to load")
    checkpointer = checkpoints.Checkpointer(checkpoint_dir, keep=setup.config.keep_checkpoints)
    try:
        restored = checkpointer.restore(
            _abstract_state(setup), run_identity(setup.config), step=step
        )
    finally:
        checkpointer.close()
    if restored is None:
        wanted = "no readable checkpoint" if step is None else f"no readable checkpoint {step}"
        raise ConfigError(f"{checkpoint_dir} holds {wanted}")
    return restored


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """A trained model from a work dir, for inference in your own code.

    `model.apply(variables, images, train=False)` gives the logits of a float32 batch of
    images normalised as the training input was: `(x / 255 − mean) / std` with the dataset's
    per-channel `spec.mean` and `spec.std`, at `image_shape`.

    Attributes:
      model: the linen model the checkpoint belongs to.
      variables: {'params': ..., 'batch_stats': ...} (host arrays).
      config: the run's config (from `<workdir>/config.json`).
      spec: its dataset's spec (classes, image statistics).
      image_shape: the model's input shape (height, width, channels).
      step: the checkpoint's step.
    """

    model: Any
    variables: dict[str, Any]
    config: ml_collections.ConfigDict
    spec: datasets.DatasetSpec
    image_shape: tuple[int, int, int]
    step: int


def load_run(workdir: str, step: int | None = None) -> SavedRun:
    """Loads the model and weights of a work dir's latest (or the given) checkpoint.

    The config comes from the `config.json` the trainer writes into every work dir, so nothing
    but the work dir is needed. Runs on one device (any BatchNorm scope evaluates the same).

    >>> import train  # doctest: +SKIP
    >>> run = train.load_run("runs/default")  # doctest: +SKIP
    >>> logits = run.model.apply(run.variables, images, train=False)  # doctest: +SKIP

    Raises:
      ConfigError: `workdir` holds no config.json or no readable checkpoint.
    """
    config_path = epath.Path(workdir) / CONFIG_FILE
    if not config_path.exists():
        raise ConfigError(f"{config_path} does not exist: {workdir} is not a trainer's work dir")
    config = _config_from_json(json.loads(config_path.read_text()))
    # One device evaluates any BN scope; BN over groups of g devices resolves for g of them.
    setup = resolve(config, device_count=config.bn.group_size if config.bn.scope == "group" else 1)
    step, state = restore_checkpoint(setup, workdir, step)
    return SavedRun(
        model=setup.model,
        variables={"params": state.params, "batch_stats": state.batch_stats},
        config=config,
        spec=setup.spec,
        image_shape=setup.image_shape,
        step=step,
    )


def _config_from_json(values: dict[str, Any]) -> ml_collections.ConfigDict:
    """A config saved as JSON (tuples became lists) on top of the default's fields and types."""
    config = default.get_config()
    for field, value in flat_fields(ml_collections.ConfigDict(values)).items():
        node = config
        *parents, leaf = field.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = tuple(value) if isinstance(value, list) else value
    return config


def _abstract_state(setup: Setup) -> steps.TrainState:
    return jax.eval_shape(
        lambda variables: steps.TrainState.create(
            variables, setup.optimizer.tx, setup.noise_scale_ema
        ),
        setup.abstract_variables,
    )


def _eval_step(setup: Setup, runner: runners.Runner):
    return functools.partial(
        steps.eval_step,
        model=setup.model,
        num_classes=setup.spec.num_classes,
        axis_name=runner.axis_name,
        normalize=inputs.normalizer(setup),
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains and evaluates; resumes from the latest checkpoint in `workdir` if there is one.

    Returns:
      The final evaluation metrics (accuracy, loss, top5 when classes > 10).

    Raises:
      ConfigError: bad config, work dir or dataset, before anything is compiled or written.
      checkpoints.IncompatibleCheckpointError: `workdir` holds another run's checkpoints; it is
        left unchanged.
      checkpoints.CheckpointWriteError: a checkpoint could not be written (disk full, ...); the
        previous one is intact.
      NonFiniteLossError: the loss diverged (with `on_nonfinite='stop'`).
      preemption.Stopped: SIGTERM or SIGINT arrived; a checkpoint was written first.
    """
    # ---- Bad input first: every field, then the cluster, the data and the work dir.
    check_fields(config)
    initialize_distributed(config.distributed)
    setup = resolve(config, jax.device_count())
    sources = _open_data(setup)
    workdir_path = _create_workdir(workdir)
    with preemption.stop_on_signals() as stop_request:
        return _train(setup, workdir_path, *sources, stop_request)


def _open_data(setup: Setup) -> tuple[Any, Any]:
    config, spec = setup.config, setup.spec
    load = datasets.load_in_memory if config.data_in_memory else datasets.load_source
    try:
        return (
            load(config.dataset, spec.train_split, config.data_dir),
            load(config.dataset, spec.test_split, config.data_dir),
        )
    except datasets.DatasetNotPreparedError as error:
        raise ConfigError(" ".join(str(error).split())) from error


def _create_workdir(workdir: str) -> epath.Path:
    path = epath.Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"workdir {workdir!r} cannot be created: {error}") from error
    if isinstance(path, os.PathLike) and not str(path).startswith(("gs://", "s3://")):
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"workdir {workdir!r} is not writable")
    return path


def _train(
    setup: Setup,
    workdir: epath.Path,
    train_source: Any,
    test_source: Any,
    stop_request: preemption.StopRequest,
) -> dict[str, float]:
    checkpointer = checkpoints.Checkpointer(
        workdir / "checkpoints", keep=setup.config.keep_checkpoints
    )
    try:
        return _run(setup, workdir, train_source, test_source, stop_request, checkpointer)
    finally:
        # Waits for the checkpoint in flight: whatever ends the run (its end, a signal, an
        # error), the checkpoint it reports is on disk.
        checkpointer.close()


def _run(
    setup: Setup,
    workdir: epath.Path,
    train_source: Any,
    test_source: Any,
    stop_request: preemption.StopRequest,
    checkpointer: checkpoints.Checkpointer,
) -> dict[str, float]:
    config, layout, optimizer = setup.config, setup.layout, setup.optimizer
    is_writer = jax.process_index() == 0

    # ---- The state: restored from the latest checkpoint of this run, or initialised.
    identity = run_identity(config)
    abstract_state = _abstract_state(setup)
    checkpoint_dir = workdir / "checkpoints"
    checkpointer.check_compatible(abstract_state, identity)
    _claim_workdir(workdir, config, identity, is_writer)
    restored = checkpointer.restore(abstract_state, identity)
    if restored is None:
        start_step, last_checkpoint = 0, None
        variables = steps.init_variables(setup.model, setup.image_shape, config.seed)
        state = steps.TrainState.create(variables, optimizer.tx, setup.noise_scale_ema)
    else:
        start_step, state = restored
        last_checkpoint = start_step
        if is_writer:
            print(f"resumed from the checkpoint of step {start_step} in {checkpoint_dir}")
    writer = MetricsWriter(workdir, enabled=is_writer)
    writer.drop_after(start_step)

    # ---- Compiled, device-mapped functions.
    runner = setup.runner()
    train_step = runner.map(
        functools.partial(
            steps.train_step,
            model=setup.model,
            tx=optimizer.tx,
            label_smoothing=config.label_smoothing,
            skip_nonfinite=config.on_nonfinite == "skip",
            loss_penalty=optimizer.loss_penalty,
            axis_name=runner.axis_name,
            noise_scale_ema=setup.noise_scale_ema,
            normalize=inputs.normalizer(setup),
            mix=setup.mix,
        ),
        donate_argnums=(0,),
    )
    evaluate_now = Evaluator(setup, runner, train_source, test_source)
    average_batch_stats = runner.map(
        functools.partial(steps.average_batch_stats, axis_name=runner.axis_name),
        donate_argnums=(0,),
    )
    device_state = runner.replicate(state)
    # The loss's sharpness every `sharpness.every_steps` steps (None when off: nothing is built).
    probe = sharpness.make_probe(setup, runner, train_source)

    def check_finite(step: int, fetched: dict[str, float]) -> None:
        if fetched["finite"] or config.on_nonfinite == "skip":
            return
        progress.close()
        kept = _kept(last_checkpoint, checkpoint_dir)
        raise NonFiniteLossError(
            f"non-finite loss, update or BatchNorm statistics at step {step} (loss "
            f"{fetched['loss']}); the last good checkpoint is {kept}. Lower the learning rate, "
            "or set --config.on_nonfinite=skip to skip such updates."
        )

    # ---- The loop.
    host_batches = pipeline.train_batches(
        train_source,
        setup.spec,
        seed=config.seed,
        global_batch=layout.batch_size,
        start_step=start_step,
        num_steps=layout.total_steps - start_step,
        augment=config.augment,
        accumulation_steps=layout.accumulation_steps,
        **inputs.loader_options(setup),
    )
    progress = tqdm.tqdm(
        total=layout.total_steps,
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
    eval_every = config.eval_every_epochs * layout.steps_per_epoch
    final_eval: dict[str, float] = {}
    step = start_step
    device_batches = runner.prefetch(map(inputs.model_inputs, host_batches), config.device_prefetch)
    for batch in device_batches:
        device_state, metrics = train_step(device_state, batch)
        step += 1
        timed_steps += 1
        pending.append((step, metrics))
        progress.update(1)
        is_last = step == layout.total_steps
        log_now = step % config.log_every_steps == 0 or is_last
        eval_now = step % eval_every == 0 or is_last
        checkpoint_now = step % config.checkpoint_every_steps == 0 or is_last
        measure_now = probe is not None and probe.due(step)
        sync_now = (
            log_now
            or eval_now
            or checkpoint_now
            or measure_now
            or len(pending) >= config.sync_every_steps
        )
        # One process checks for a signal every step; several agree on it at their sync points.
        if not sync_now and not (jax.process_count() == 1 and stop_request.local()):
            continue

        # Sync: fetching the metrics waits for the devices, which bounds the queue of steps with
        # collectives (CPU collectives deadlock when too many are queued).
        for pending_step, device_metrics in pending:
            fetched = {k: float(v) for k, v in runners.fetch_first(device_metrics).items()}
            check_finite(pending_step, fetched)
            window.append(fetched)
        pending.clear()
        stop = stop_request.agreed()

        if log_now and window:
            record = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
            # Values of the latest step: the lr, and the noise scale's (already averaged) EMAs.
            for key in ("learning_rate", *steps.NOISE_SCALE_METRICS):
                if key in record:
                    record[key] = window[-1][key]
            record["images_per_sec"] = (
                timed_steps * layout.batch_size / (time.perf_counter() - timer_start)
            )
            record["epoch"] = step / layout.steps_per_epoch
            writer.write(step, "train", record)
            progress.set_postfix(
                loss=f"{record['loss']:.3f}", img_s=f"{record['images_per_sec']:.0f}"
            )
            window.clear()
            timer_start, timed_steps = time.perf_counter(), 0

        if measure_now:
            # Reads the state only (nothing donated): the trajectory is the same without it.
            record = {**probe(device_state, step), "epoch": step / layout.steps_per_epoch}
            writer.write(step, sharpness.KIND, record)
            timer_start, timed_steps = time.perf_counter(), 0

        if eval_now or checkpoint_now or stop:
            # Per-device BN running statistics are averaged before they are used or saved; the
            # training forward pass never reads them, so the trajectory is unchanged.
            device_state = average_batch_stats(device_state)
        if eval_now:
            # With precise BN the running averages are replaced by statistics of the current
            # weights (so the checkpoint of the last step holds them); this happens at the same
            # steps in a resumed run, and training never reads them, so resuming stays exact.
            device_state, final_eval = evaluate_now(device_state, step)
            writer.write(step, "eval", {**final_eval, "epoch": step / layout.steps_per_epoch})
            progress.write(
                f"epoch {step / layout.steps_per_epoch:g}: test accuracy "
                f"{100 * final_eval['accuracy']:.2f}%, loss {final_eval['loss']:.4f}"
                + (
                    f" (weight EMA: {100 * final_eval['ema_accuracy']:.2f}%, loss "
                    f"{final_eval['ema_loss']:.4f})"
                    if "ema_accuracy" in final_eval
                    else ""
                )
            )
        wrote = False
        if (checkpoint_now or stop) and step != last_checkpoint:
            host_state = runners.fetch_first(device_state)
            _check_finite_state(host_state, step, _kept(last_checkpoint, checkpoint_dir))
            _check_same_on_all_processes(host_state.params)
            checkpointer.save(step, host_state, identity)
            last_checkpoint, wrote = step, True
        if stop:
            progress.close()
            writer.close()
            raise preemption.Stopped(stop, step, str(checkpoint_dir), wrote)
        if eval_now or checkpoint_now:
            timer_start, timed_steps = time.perf_counter(), 0
    progress.close()

    # ---- Results.
    if not final_eval:  # resumed from the checkpoint of the last step
        _, final_eval = evaluate_now(device_state, step)
    if is_writer:
        plots.plot_run(read_metrics(workdir), layout.steps_per_epoch, workdir / "curves.png")
    writer.close()
    return final_eval


def _claim_workdir(
    workdir: epath.Path, config: ml_collections.ConfigDict, identity: dict[str, Any], is_writer
) -> None:
    """Refuses a work dir whose `config.json` belongs to another run; writes it for a new one.

    The checkpoints carry the run identity too; `config.json` also guards a run that stopped
    before its first checkpoint, and tells a reader which config made the work dir.
    """
    path = workdir / CONFIG_FILE
    if path.exists():
        checkpoints.check_same_run(workdir, run_identity(json.loads(path.read_text())), identity)
    elif is_writer:
        path.write_text(json.dumps(config.to_dict(), indent=1, sort_keys=True) + "\n")


def _kept(last_checkpoint: int | None, checkpoint_dir: epath.Path) -> str:
    if last_checkpoint is None:
        return "none (no checkpoint had been written)"
    return f"step {last_checkpoint} in {checkpoint_dir}, left intact"


def _check_finite_state(host_state: steps.TrainState, step: int, kept: str) -> None:
    """Refuses to checkpoint a state with a NaN/inf weight, optimizer moment or BN statistic."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(host_state):
        leaf = np.asarray(leaf)
        if np.issubdtype(leaf.dtype, np.floating) and not np.all(np.isfinite(leaf)):
            raise NonFiniteLossError(
                f"the state of step {step} holds non-finite values "
                f"({jax.tree_util.keystr(path)}), so it was not checkpointed; the last good "
                f"checkpoint is {kept}. Lower the learning rate."
            )


class Evaluator:
    """Scores a device state at a step: the weights, with BN statistics recomputed for them
    over `bn.precise_batches` training batches from that step when precise BN is on, and the
    weight EMA beside them (keys `ema_*`) when there is one.

    `precise_batches` overrides the config's count (`bench/precise_bn.py` compares counts).
    """

    def __init__(
        self,
        setup: Setup,
        runner: runners.Runner,
        train_source: Any,
        test_source: Any,
        precise_batches: int | None = None,
    ):
        self.setup, self.runner = setup, runner
        self.train_source, self.test_source = train_source, test_source
        config = setup.config
        self.eval_step = runner.map(_eval_step(setup, runner))
        self.precise_batches = (
            config.bn.precise_batches if precise_batches is None else precise_batches
        )
        self.ema = config.ema.decay > 0
        if self.precise_batches:
            estimator = steps.precise_bn_estimator(setup.model, axis_name=runner.axis_name)
            self.init = runner.map(functools.partial(steps.precise_bn_init, estimator=estimator))
            weights = (False, True) if self.ema else (False,)
            self.update = {
                ema: runner.map(
                    functools.partial(
                        steps.precise_bn_update,
                        estimator=estimator,
                        ema=ema,
                        normalize=inputs.normalizer(setup),
                    ),
                    donate_argnums=(0,),
                )
                for ema in weights
            }
            self.finish = {
                ema: runner.map(
                    functools.partial(
                        steps.with_precise_bn,
                        estimator=estimator,
                        ema=ema,
                        keep_if_nonfinite=(
                            runner.axis_name if config.on_nonfinite == "skip" else None
                        ),
                    )
                )
                for ema in weights
            }

    def __call__(self, device_state: Any, step: int) -> tuple[Any, dict[str, float]]:
        """(the state with precise BN statistics when on, its evaluation record)."""
        if self.precise_batches:
            device_state = self.with_precise_bn(device_state, step)
        result = self.scores(device_state)
        if self.ema:
            result.update(
                {
                    f"ema_{key}": value
                    for key, value in self.scores(
                        self.with_precise_bn(device_state, step, ema=True)
                    ).items()
                }
            )
        return device_state, result

    def scores(self, device_state: Any) -> dict[str, float]:
        """Loss and accuracy of the state's weights and BN statistics on the test split."""
        return _evaluate(self.setup, self.runner, self.eval_step, device_state, self.test_source)

    def with_precise_bn(
        self, device_state: Any, step: int, *, ema: bool = False, num_batches: int | None = None
    ) -> Any:
        """The state with BN statistics of its weights (or, with `ema`, of their average, which
        then replaces the weights) over the training batches of steps `step` … `step + N − 1`
        (N = `num_batches` or the evaluator's count), without augmentation: a loader of its
        own, so the training stream is left as it is."""
        config, layout = self.setup.config, self.setup.layout
        batches = pipeline.train_batches(
            self.train_source,
            self.setup.spec,
            seed=config.seed,
            global_batch=layout.batch_size,
            start_step=step,
            num_steps=num_batches or self.precise_batches,
            augment=False,
            accumulation_steps=layout.accumulation_steps,
            **inputs.loader_options(self.setup),
        )
        stats = self.init(device_state)
        for batch in self.runner.prefetch(map(inputs.model_inputs, batches)):
            stats = self.update[ema](stats, device_state, batch)
        return self.finish[ema](device_state, stats)


def _evaluate(setup, runner, eval_step, device_state, test_source) -> dict[str, float]:
    """Loss and accuracy (top-5 too for > 10 classes) over the whole test split."""
    sums: dict[str, float] = {}
    for batch in pipeline.eval_batches(
        test_source,
        setup.spec,
        global_batch=setup.layout.eval_batch_size,
        **inputs.loader_options(setup),
    ):
        out = runners.fetch_first(eval_step(device_state, runner.put(inputs.model_inputs(batch))))
        for key, value in out.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    count = sums.pop("count")
    result = {"loss": sums.pop("loss") / count, "accuracy": sums.pop("top1") / count}
    result.update({key: value / count for key, value in sums.items()})
    return result


def _check_same_on_all_processes(params: Any) -> None:
    """Fails loudly if the processes' weights have drifted apart (they should be identical)."""
    if jax.process_count() > 1:
        # float32: the all-gather runs without x64, and a float64 array would come back rounded.
        fingerprint = np.array(
            [np.sum(np.abs(x), dtype=np.float64) for x in jax.tree.leaves(params)], np.float32
        )
        multihost_utils.assert_equal(fingerprint, "the processes' parameters differ")
