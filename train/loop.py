"""The training loop: the Goyal et al. recipe on a TFDS dataset, data-parallel over devices.

`train_and_evaluate` reads top to bottom: resolve the config (`resolve.resolve`: every field
checked, the model, optimizer, batch layout and loop options computed, nothing compiled), open
the data and the work dir, restore the latest checkpoint of this run (after checking that it
is this run's) or initialise the state, then step, with periodic logging, evaluation
(`evaluation.Evaluator`) and checkpointing.
"""

import contextlib
import functools
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from etils import epath
from jax.experimental import multihost_utils

from train import (
    checkpoints,
    inputs,
    plots,
    preemption,
    run_layout,
    runners,
    sharpness,
    steps,
    warmup_start,
    workdir_lock,
)
from train.evaluation import Evaluator
from train.metrics import MetricsWriter, read_metrics
from train.resolve import check_fields, resolve
from train.skipped_updates import SkippedUpdates


class NonFiniteLossError(RuntimeError):
    """The loss, an update or the BN statistics became NaN/inf (with `on_nonfinite='skip'`:
    in more than half of an epoch's steps); the last good checkpoint is kept."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains and evaluates; resumes from the latest checkpoint in `workdir` if there is one.

    Returns:
      The final evaluation metrics (accuracy, loss, top5 when classes > 10); with
      `on_nonfinite='skip'`, also `skipped_updates`: the steps of the whole run whose update was
      skipped; with `unreadable_images='skip'`, also `unreadable_images`: the images skipped
      because they do not decode.

    Raises:
      ConfigError: bad config, work dir or dataset, before anything is compiled or written.
      checkpoints.IncompatibleCheckpointError: `workdir` holds another run's checkpoints; it is
        left unchanged.
      metrics.WorkdirWriteError: a checkpoint (`checkpoints.CheckpointWriteError`), the metrics or
        the plot could not be written (disk full, ...); the checkpoints written before are intact.
      NonFiniteLossError: the loss diverged (with `on_nonfinite='stop'`), or more than half of
        an epoch's updates were skipped (with `on_nonfinite='skip'`, `train.skipped_updates`).
      preemption.Stopped: SIGTERM or SIGINT arrived; a checkpoint was written first.
      recipe.data.UnreadableImageError: an image does not decode (`unreadable_images='stop'`);
        the checkpoints written before are intact.
    """
    # ---- Bad input first: every field, then the cluster, the data and the work dir.
    check_fields(config)
    runners.initialize_distributed(config.distributed)
    setup = resolve(config, jax.device_count())
    layout, options = setup.layout, setup.loop
    train_source, test_source = inputs.open_data(setup)
    subset = inputs.training_subset(setup)
    workdir = checkpoints.create_workdir(workdir)
    checkpoint_dir = workdir / "checkpoints"
    is_writer = jax.process_index() == 0

    # One writer: the work dir's lock is taken before anything is written to it and released
    # after the last write. Closing the checkpointer waits for the checkpoint in flight: whatever
    # ends the run (its end, a signal, an error), the checkpoint it reports is on disk.
    with (
        workdir_lock.hold(workdir) as check_lock,
        preemption.stop_on_signals() as stop_request,
        contextlib.closing(
            checkpoints.Checkpointer(checkpoint_dir, keep=options.keep_checkpoints)
        ) as checkpointer,
    ):
        # ---- The state: restored from the latest checkpoint of this run, or initialised.
        identity = checkpoints.run_identity(setup.config)
        abstract_state = checkpoints.abstract_train_state(setup)
        checkpointer.check_compatible(abstract_state, identity)
        # The device layout is part of the run: kept, or refused before anything is written.
        setup, kept_layout = run_layout.keep(setup, workdir, config)
        layout = setup.layout
        checkpoints.claim_workdir(workdir, setup)
        run_layout.store(workdir, setup)
        if is_writer:
            for note in setup.notes:
                print(f"note: {note}")
            if kept_layout:
                print(kept_layout)
        # Before the first step (or as stored at it): where the warmup starts.
        setup, warmup_record = warmup_start.at_stability_edge(setup, workdir, train_source)
        if is_writer and warmup_record is not None:
            print(warmup_start.message(warmup_record))
        restored = checkpointer.restore(abstract_state, identity)
        if restored is None:
            start_step, last_checkpoint = 0, None
            variables = steps.init_variables(setup.model, setup.image_shape, setup.seed)
            state = steps.TrainState.create(variables, setup.optimizer.tx, setup.noise_scale_ema)
        else:
            start_step, state = restored
            last_checkpoint = start_step
            if is_writer:
                print(f"resumed from the checkpoint of step {start_step} in {checkpoint_dir}")
        if is_writer and subset is not None:
            print(f"training on {subset.text(setup.spec)}")
        writer = MetricsWriter(workdir, enabled=is_writer)
        writer.drop_after(start_step)
        if warmup_record is not None:
            writer.write(0, warmup_start.KIND, warmup_record)
        # A skipped update keeps the whole state, its step count too: a checkpoint's count
        # falls short of its step by the updates skipped before it.
        skipped = (
            SkippedUpdates(layout.steps_per_epoch, skipped_before=start_step - int(state.step))
            if options.skip_nonfinite
            else None
        )

        # ---- Compiled, device-mapped functions.
        runner = setup.runner()
        train_step = runner.map(
            functools.partial(
                steps.train_step,
                model=setup.model,
                tx=setup.optimizer.tx,
                label_smoothing=options.label_smoothing,
                skip_nonfinite=options.skip_nonfinite,
                loss_penalty=setup.optimizer.loss_penalty,
                axis_name=runner.axis_name,
                noise_scale_ema=setup.noise_scale_ema,
                normalize=inputs.normalizer(setup),
                mix=setup.mix,
                relative_update=options.relative_update,
            ),
            donate_argnums=(0,),
        )
        average_batch_stats = runner.map(
            functools.partial(steps.average_batch_stats, axis_name=runner.axis_name),
            donate_argnums=(0,),
        )
        progress = tqdm.tqdm(
            total=layout.total_steps,
            initial=start_step,
            disable=not (options.progress_bar and is_writer),
            unit="step",
            dynamic_ncols=True,
        )
        unreadable = None
        if setup.data.unreadable == "skip":
            sources = {"train": train_source, "test": test_source}
            write = progress.write if is_writer else lambda line: None
            unreadable = inputs.UnreadableImages(sources, write)
        evaluator = Evaluator(setup, runner, train_source, test_source, unreadable=unreadable)
        device_state = runner.place(state)
        # The loss's sharpness every `sharpness.every_steps` steps (None when off: nothing built).
        probe = sharpness.make_probe(setup, runner, train_source)

        # ---- The loop.
        host_batches = inputs.train_batches(
            setup,
            train_source,
            start_step=start_step,
            num_steps=layout.total_steps - start_step,
            augment=setup.data.augment,
        )
        if unreadable is not None:
            host_batches = unreadable.watch(host_batches, "train")
        pending: list[tuple[int, Any]] = []  # (step, device metrics) not fetched yet
        window: list[dict[str, float]] = []  # fetched metrics since the last log record
        # Throughput: steps dispatched since `timer_start`, which restarts after each log
        # record, evaluation and checkpoint so that images/s counts training time only.
        timer_start, timed_steps = time.perf_counter(), 0
        final_eval: dict[str, float] = {}
        step = start_step
        device_batches = runner.prefetch(
            map(inputs.model_inputs, host_batches), setup.data.device_prefetch
        )
        for batch in device_batches:
            device_state, metrics = train_step(device_state, batch)
            step += 1
            timed_steps += 1
            pending.append((step, metrics))
            progress.update(1)
            is_last = step == layout.total_steps
            log_now = step % options.log_every_steps == 0 or is_last
            eval_now = step % options.eval_every_steps == 0 or is_last
            checkpoint_now = step % options.checkpoint_every_steps == 0 or is_last
            measure_now = probe is not None and probe.due(step)
            sync_now = (
                log_now
                or eval_now
                or checkpoint_now
                or measure_now
                or len(pending) >= options.sync_every_steps
            )
            # One process checks for a signal every step; several agree at their sync points.
            if not sync_now and not (jax.process_count() == 1 and stop_request.local()):
                continue

            # Sync: fetching the metrics waits for the devices, which bounds the queue of steps
            # with collectives (CPU collectives deadlock when too many are queued).
            for pending_step, device_metrics in pending:
                fetched = {k: float(v) for k, v in runner.fetch(device_metrics).items()}
                kept = _kept(last_checkpoint, checkpoint_dir)
                failure = _nonfinite_failure(pending_step, fetched, skipped, kept)
                if failure:
                    progress.close()
                    raise NonFiniteLossError(failure)
                window.append(fetched)
            pending.clear()
            check_lock()
            stop = stop_request.agreed()

            if log_now and window:
                elapsed = time.perf_counter() - timer_start
                images_per_sec = timed_steps * layout.batch_size / elapsed
                record = _train_record(window, images_per_sec, step / layout.steps_per_epoch)
                if skipped is not None:
                    record["skipped_updates"] = skipped.take_interval()
                if unreadable is not None:
                    record["unreadable_images"] = unreadable.count
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
                # Per-device BN running statistics are averaged before they are used or saved;
                # the training forward pass never reads them, so the trajectory is unchanged.
                device_state = average_batch_stats(device_state)
            if eval_now:
                # With precise BN the running averages are replaced by statistics of the current
                # weights (so the checkpoint of the last step holds them); this happens at the
                # same steps in a resumed run, and training never reads them, so resuming stays
                # exact.
                device_state, final_eval = evaluator(device_state, step)
                epoch = step / layout.steps_per_epoch
                writer.write(step, "eval", {**final_eval, "epoch": epoch})
                note = skipped.evaluation_note() if skipped is not None else ""
                progress.write(_eval_message(epoch, final_eval) + note)
            wrote = False
            if (checkpoint_now or stop) and step != last_checkpoint:
                host_state = runner.fetch(device_state)
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
            _, final_eval = evaluator(device_state, step)
        if is_writer and options.plot_curves:
            plots.plot_run(read_metrics(workdir), layout.steps_per_epoch, workdir / "curves.png")
        writer.close()
        result = dict(final_eval)
        if skipped is not None:
            result["skipped_updates"] = skipped.total
        if unreadable is not None:
            result["unreadable_images"] = unreadable.count
        return result


def _train_record(
    window: list[dict[str, float]], images_per_sec: float, epoch: float
) -> dict[str, float]:
    """The training log record of the steps in `window`: their mean, but the latest step's
    learning rate and noise-scale EMAs (already averages), and the relative update sizes' mean
    over the steps that moved the weights (under gradient accumulation the micro-steps that
    only accumulate apply 0: left out)."""
    record = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
    for key in ("learning_rate", *steps.NOISE_SCALE_METRICS):
        if key in record:
            record[key] = window[-1][key]
    for key in record:
        if key.startswith(steps.RELATIVE_UPDATE):
            moved = [m[key] for m in window if m[key] != 0]
            record[key] = float(np.mean(moved)) if moved else 0.0
    record["images_per_sec"] = images_per_sec
    record["epoch"] = epoch
    return record


def _eval_message(epoch: float, result: dict[str, float]) -> str:
    message = (
        f"epoch {epoch:g}: test accuracy {100 * result['accuracy']:.2f}%, loss {result['loss']:.4f}"
    )
    if "ema_accuracy" in result:
        message += (
            f" (weight EMA: {100 * result['ema_accuracy']:.2f}%, loss {result['ema_loss']:.4f})"
        )
    return message


def _nonfinite_failure(
    step: int, fetched: dict[str, float], skipped: SkippedUpdates | None, kept: str
) -> str | None:
    """Why a step's metrics stop the run (naming `kept`, the last good checkpoint), or None.
    Without `skipped` (`on_nonfinite='stop'`) any non-finite step stops it; with it, more than
    half of an epoch's updates skipped."""
    if skipped is None:
        if fetched["finite"]:
            return None
        return (
            f"non-finite loss, update or BatchNorm statistics at step {step} (loss "
            f"{fetched['loss']}); the last good checkpoint is {kept}. Lower the learning rate, "
            "or set --config.on_nonfinite=skip to skip such updates."
        )
    failure = skipped.add(step, finite=bool(fetched["finite"]))
    if failure is None:
        return None
    return (
        f"{failure}; the last good checkpoint is {kept}. With on_nonfinite=skip a run stops "
        "once more than half of an epoch's updates are skipped: nothing is being learned. Lower "
        "the learning rate."
    )


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


def _check_same_on_all_processes(params: Any) -> None:
    """Fails loudly if the processes' weights have drifted apart (they should be identical)."""
    if jax.process_count() > 1:
        # float32: the all-gather runs without x64, and a float64 array would come back rounded.
        fingerprint = np.array(
            [np.sum(np.abs(x), dtype=np.float64) for x in jax.tree.leaves(params)], np.float32
        )
        multihost_utils.assert_equal(fingerprint, "the processes' parameters differ")
