"""The loss's sharpness during a run (`sharpness.every_steps`): λ_max on a fixed training batch.

Every `every_steps` steps the loop calls a `SharpnessProbe` on the current state: the top
eigenvalue of the Hessian of the training objective (the label-smoothed cross-entropy plus the
L2 penalty the optimizer is given) on one fixed batch, the first global batch of the run's
training stream without augmentation, by `recipe.sharpness.top_hessian_eigenvalue` with
`sharpness.method` ('lanczos' by default: from the same products, a residual far below power
iteration's). BN is in training mode with that batch's statistics (per device, as in the
step); the products are averaged over the devices, so λ_max is that of the global loss. It
logs, as records of kind 'sharpness' in metrics.jsonl and TensorBoard:

    sharpness              λ_max
    lr_times_sharpness     η·λ_max, η the learning rate of the next update
    sharpness_threshold    the optimizer's stability threshold (`stability_threshold`)
    sharpness_residual     |H v − λ v| / |λ| of the last iteration (0 when converged)

Measuring only reads the state (the step's state is not donated to it) and no random stream of
training: the weights are the same as without it. The cost is `iterations` Hessian-vector
products per measurement, each about two gradient evaluations on the fixed batch.
"""

from typing import Any

import jax

from recipe import losses, sharpness
from recipe.data import pipeline
from train import inputs, runners, steps
from train.resolve import Setup

KIND = "sharpness"  # the records' kind in metrics.jsonl, their tags' prefix in TensorBoard


def measure_step(
    state: steps.TrainState,
    batch: steps.Batch,
    key: jax.Array,
    *,
    setup: Setup,
    iterations: int,
    method: str,
    axis_name: steps.AxisName,
    unroll: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """(λ_max, last residual) of the global training objective, per device under a runner."""
    images = inputs.normalizer(setup)(batch["image"])
    penalty = setup.optimizer.loss_penalty

    def loss_fn(params: Any) -> jax.Array:
        logits, _ = setup.model.apply(  # BN's updated running averages are thrown away
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        loss = losses.cross_entropy(logits, batch["label"], setup.loop.label_smoothing)
        return loss if penalty is None else loss + penalty(params)

    found = sharpness.top_hessian_eigenvalue(
        loss_fn,
        state.params,
        key,
        iterations=iterations,
        axis_name=axis_name,
        method=method,
        unroll=unroll,
    )
    return found.eigenvalue, found.residuals[-1]


class SharpnessProbe:
    """λ_max of the run's objective on its fixed batch, at steps that are multiples of
    `sharpness.every_steps` (see the module doc).

    Attributes:
      every_steps: steps between measurements.
      threshold: the optimizer's stability threshold on η·λ_max.
      batch: the fixed batch on the devices, {'image': uint8, 'label'}.

    `unroll`: the products in one unrolled program (`top_hessian_eigenvalue`'s `unroll`): on
    XLA:CPU about 8× faster a measurement for a compile about 4× longer (BENCHMARKS.md §10),
    which a run measuring often repays (`sharpness.unroll`) and a single measurement does not.
    """

    def __init__(
        self, setup: Setup, runner: runners.Runner, train_source: Any, *, unroll: bool = False
    ):
        options, layout = setup.loop, setup.layout
        self.every_steps = options.sharpness_every_steps
        self.threshold = options.sharpness_threshold
        self._schedule = setup.optimizer.schedule
        self._accumulation = layout.accumulation_steps
        first = next(
            pipeline.train_batches(
                train_source,
                setup.spec,
                seed=setup.seed,
                global_batch=layout.batch_size,
                num_steps=1,
                augment=False,
                **inputs.loader_options(setup),
            )
        )
        self.batch = runner.put({k: first[k] for k in ("image", "label")})
        self._key = runner.place(jax.random.key_data(jax.random.key(setup.seed)))
        self._fetch = runner.fetch
        self._measure = runner.map(
            lambda state, batch, key_data: measure_step(
                state,
                batch,
                jax.random.wrap_key_data(key_data),
                setup=setup,
                iterations=options.sharpness_iterations,
                method=options.sharpness_method,
                axis_name=runner.axis_name,
                unroll=unroll,
            )
        )

    def due(self, step: int) -> bool:
        return step % self.every_steps == 0

    def __call__(self, device_state: Any, step: int) -> dict[str, float]:
        """The record (the module doc's four values) for the state after `step` micro-steps."""
        eigenvalue, residual = self._fetch(self._measure(device_state, self.batch, self._key))
        learning_rate = float(self._schedule(step // self._accumulation))
        return {
            "sharpness": float(eigenvalue),
            "lr_times_sharpness": learning_rate * float(eigenvalue),
            "sharpness_threshold": self.threshold,
            "sharpness_residual": float(residual),
        }


def make_probe(setup: Setup, runner: runners.Runner, train_source: Any) -> SharpnessProbe | None:
    """The run's probe, or None when `sharpness.every_steps` is 0 (nothing built or compiled);
    its products unrolled with `sharpness.unroll`."""
    if not setup.loop.sharpness_every_steps:
        return None
    return SharpnessProbe(setup, runner, train_source, unroll=setup.loop.sharpness_unroll)


def describe(setup: Setup) -> str:
    """The `--describe` line: what is measured and what it costs."""
    options, layout = setup.loop, setup.layout
    every, iterations = options.sharpness_every_steps, options.sharpness_iterations
    if not every:
        return (
            "not measured (--config.sharpness.every_steps=N logs λ_max of the loss's Hessian "
            "and η·λ_max against the optimizer's stability threshold every N steps)"
        )
    measurements = layout.total_steps // every
    overhead = 2 * iterations * measurements / max(layout.total_steps, 1)
    method = "Lanczos" if options.sharpness_method == "lanczos" else "power iteration"
    loop = "unrolled" if options.sharpness_unroll else "in a loop"
    return (
        f"λ_max of the loss's Hessian ({method}, {iterations} Hessian-vector products {loop}) on "
        f"a fixed batch of {layout.batch_size} every {every} steps ({measurements} "
        f"measurements), logged with η·λ_max against the stability threshold "
        f"{options.sharpness_threshold:.4g}; costs ≈ {2 * iterations} forward+backward passes "
        f"per measurement, in all ≈ {overhead:.2g}× the passes of training"
    )
