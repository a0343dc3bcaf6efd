"""Scoring a train state on the test split: `Evaluator` inside the loop, `evaluate_checkpoint`
for a work dir's saved run (`python -m train --eval_only`).

With precise BN (Wu & Johnson 2021) the BN statistics are recomputed for the weights over
training batches from the step being scored before the test split is read; with a weight EMA,
the average is scored beside the weights with statistics of its own (keys `ema_*`).
"""

import functools
from typing import Any

import jax
import ml_collections
from etils import epath

from recipe.data import pipeline
from train import checkpoints, inputs, run_layout, runners, steps
from train.resolve import Setup, check_fields, resolve


class Evaluator:
    """Scores a device state at a step: the weights, with BN statistics recomputed for them
    over `precise_bn_batches` training batches from that step when precise BN is on, and the
    weight EMA beside them (keys `ema_*`) when there is one.

    `precise_batches` overrides the setup's count (`bench/precise_bn.py` compares counts);
    `unreadable` notes the images the loader skips (`unreadable_images='skip'`).
    """

    def __init__(
        self,
        setup: Setup,
        runner: runners.Runner,
        train_source: Any,
        test_source: Any,
        precise_batches: int | None = None,
        unreadable: inputs.UnreadableImages | None = None,
    ):
        self.setup, self.runner = setup, runner
        self.train_source, self.test_source = train_source, test_source
        self.unreadable = unreadable
        self.eval_step = runner.map(
            functools.partial(
                steps.eval_step,
                model=setup.model,
                num_classes=setup.spec.num_classes,
                axis_name=runner.axis_name,
                normalize=inputs.normalizer(setup),
            )
        )
        self.precise_batches = (
            setup.loop.precise_bn_batches if precise_batches is None else precise_batches
        )
        self.ema = setup.loop.evaluate_ema
        if self.precise_batches:
            groups = setup.bn_groups  # the jit runner's: statistics per group of its batch
            steps_of = {
                ema: steps.precise_bn_steps(
                    setup.model if groups is None else groups.model,
                    axis_name=runner.axis_name,
                    ema=ema,
                    normalize=inputs.normalizer(setup),
                    skip_nonfinite=setup.loop.skip_nonfinite,
                    groups=None if groups is None else groups.count,
                )
                for ema in ((False, True) if self.ema else (False,))
            }
            self.init = runner.map(steps_of[False].init)
            self.update = {
                ema: runner.map(functions.update, donate_argnums=(0,))
                for ema, functions in steps_of.items()
            }
            self.finish = {ema: runner.map(functions.finish) for ema, functions in steps_of.items()}

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
        """Loss and accuracy (top-5 too for > 10 classes) of the state's weights and BN
        statistics over the whole test split."""
        setup = self.setup
        sums: dict[str, float] = {}
        batches = pipeline.eval_batches(
            self.test_source,
            setup.spec,
            global_batch=setup.layout.eval_batch_size,
            **inputs.loader_options(setup),
        )
        if self.unreadable is not None:
            batches = self.unreadable.watch(batches, "test")
        for batch in batches:
            device_batch = self.runner.put(inputs.model_inputs(batch))
            out = self.runner.fetch(self.eval_step(device_state, device_batch))
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        count = sums.pop("count")
        result = {"loss": sums.pop("loss") / count, "accuracy": sums.pop("top1") / count}
        result.update({key: value / count for key, value in sums.items()})
        return result

    def with_precise_bn(
        self, device_state: Any, step: int, *, ema: bool = False, num_batches: int | None = None
    ) -> Any:
        """The state with BN statistics of its weights (or, with `ema`, of their average, which
        then replaces the weights) over the training batches of steps `step` … `step + N − 1`
        (N = `num_batches` or the evaluator's count), without augmentation: a loader of its
        own, so the training stream is left as it is."""
        batches = inputs.train_batches(
            self.setup,
            self.train_source,
            start_step=step,
            num_steps=num_batches or self.precise_batches,
            augment=False,
        )
        if self.unreadable is not None:
            batches = self.unreadable.watch(batches, "train")
        stats = self.init(device_state)
        for batch in self.runner.prefetch(map(inputs.model_inputs, batches)):
            stats = self.update[ema](stats, device_state, batch)
        return self.finish[ema](device_state, stats)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Scores the latest checkpoint of `workdir` on the test split, without training.

    The config must be the run's own (as for resuming). Writes nothing (a checkpoint that
    cannot be read is moved aside, as a resumed run would).

    Returns:
      {'step': the checkpoint's step, 'loss', 'accuracy' (and 'top5' for > 10 classes)}; with
      `unreadable_images='skip'`, also 'unreadable_images' (each named on stdout when met).

    Raises:
      ConfigError: bad config or dataset, or `workdir` holds no checkpoint.
      checkpoints.IncompatibleCheckpointError: the checkpoints belong to another run.
    """
    check_fields(config)
    runners.initialize_distributed(config.distributed)
    setup = resolve(config, jax.device_count())
    setup, _ = run_layout.keep(setup, epath.Path(workdir), config)  # the run's own workers
    train_source, test_source = inputs.open_data(setup)
    step, state = checkpoints.restore_checkpoint(setup, workdir)
    runner = setup.runner()
    unreadable = None
    if setup.data.unreadable == "skip":
        write = print if jax.process_index() == 0 else lambda line: None
        unreadable = inputs.UnreadableImages({"train": train_source, "test": test_source}, write)
    evaluator = Evaluator(setup, runner, train_source, test_source, unreadable=unreadable)
    _, result = evaluator(runner.place(state), step)
    if unreadable is not None:
        result["unreadable_images"] = unreadable.count
    return {"step": step, **result}
