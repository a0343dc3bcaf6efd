"""Learning-rate schedules of Goyal et al. 2017 as optax schedules.

Every schedule here is a pure function of the optimizer-update count `step` (an int or an int
array; under gradient accumulation it counts real updates, not micro-batches), works under
`jax.jit`, and returns a float32 scalar. Because the schedule position *is* the step, a resumed
run that restores the optimizer state continues exactly where it stopped.

The pieces:

* the linear scaling rule (§2.1): `scaled_learning_rate`;
* warmups (§2.2): `gradual_warmup`, `constant_warmup`, and `warmup_multiplier_schedule` with the
  semantics of the study note's PyTorch `GradualWarmupScheduler`;
* after-schedules: `step_decay`, `cosine_decay`, `polynomial_decay`;
* `goyal_schedule`, the whole recipe from the global batch and the epoch counts (§5.1), with
  the polynomial decay of the MLPerf ResNet-50 LARS recipe as one more kind ('poly').

Durations given in epochs are converted to steps in one place, `epochs_to_steps`.
"""

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from recipe import checks

WARMUP_KINDS = ("gradual", "constant", "none")
DECAY_KINDS = ("step", "cosine", "linear", "poly", "constant")


def scaled_learning_rate(base_lr: float, batch_size: int, base_batch_size: int = 256) -> float:
    """The linear scaling rule (Goyal et al. §2.1).

    When the minibatch is multiplied by k, multiply the learning rate by k:

        lr = base_lr · batch_size / base_batch_size

    The paper's reference is base_lr = 0.1 at base_batch_size = 256, so 3.2 at kn = 8192.

    Args:
      base_lr: learning rate that works at `base_batch_size`; > 0.
      batch_size: the global minibatch kn (under gradient accumulation, the effective batch of one
        optimizer update); > 0.
      base_batch_size: the batch size `base_lr` was tuned for; > 0.

    Returns:
      The scaled learning rate.

    >>> scaled_learning_rate(0.1, 8192)
    3.2
    """
    checks.check_positive("base_lr", base_lr)
    checks.check_positive_int("batch_size", batch_size)
    checks.check_positive_int("base_batch_size", base_batch_size)
    return base_lr * batch_size / base_batch_size


def epochs_to_steps(epochs: float, steps_per_epoch: int, *, name: str = "epochs") -> int:
    """Converts a duration in epochs to optimizer updates, rounding to the nearest step.

    >>> epochs_to_steps(5, 156)
    780
    """
    checks.check_non_negative(name, epochs)
    checks.check_positive_int("steps_per_epoch", steps_per_epoch)
    return int(round(epochs * steps_per_epoch))


def float32_schedule(schedule: Callable[[jax.Array], object]) -> optax.Schedule:
    """Wraps `schedule` so it always returns a float32 array (optax's may return Python floats).

    >>> float32_schedule(lambda step: 0.1)(3).dtype
    dtype('float32')
    """
    return lambda step: jnp.asarray(schedule(step), jnp.float32)


def constant(value: float) -> optax.Schedule:
    """lr(t) = value. A float32-returning `optax.constant_schedule`."""
    return float32_schedule(optax.constant_schedule(value))


def step_decay(init_value: float, boundaries: Sequence[int], factor: float = 0.1) -> optax.Schedule:
    """Multiplies the learning rate by `factor` at each boundary (Goyal §5.1: ÷10).

        lr(t) = init_value · factor^|{b ∈ boundaries : t ≥ b}|

    The decay applies *at* the boundary step. Goyal's ResNet-50 schedule is ÷10 at epochs 30, 60
    and 80 of 90.

    Args:
      init_value: learning rate before the first boundary.
      boundaries: steps (relative to the start of this schedule), increasing, >= 0.
      factor: multiplier applied at each boundary, in (0, 1].

    >>> schedule = step_decay(3.2, [10, 20])
    >>> [round(float(schedule(t)), 4) for t in (9, 10, 20)]
    [3.2, 0.32, 0.032]
    """
    for i, boundary in enumerate(boundaries):
        checks.check_non_negative_int(f"boundaries[{i}]", boundary)
    if list(boundaries) != sorted(set(boundaries)):
        raise ValueError(f"boundaries must be strictly increasing, got {list(boundaries)}")
    checks.check_interval("factor", factor, 0.0, 1.0, low_closed=False)
    return float32_schedule(
        optax.piecewise_constant_schedule(init_value, {int(b): factor for b in boundaries})
    )


def cosine_decay(init_value: float, decay_steps: int, final_value: float = 0.0) -> optax.Schedule:
    """Half-cosine from `init_value` to `final_value` over `decay_steps`, then flat.

        lr(t) = final + (init − final) · ½(1 + cos(π · min(t, T) / T))

    ½(1 + cos(πt/T)) is computed as cos²(πt/2T), or as sin²(π(T − t)/2T) past the middle
    (`half_cosine`), so the last updates keep float32's relative precision. optax's
    `cosine_decay_schedule` forms 1 + cos(πt/T) in float32, which cancels as t → T: over the
    13,260 updates of a 90-epoch decay at kn = 8k (156 updates per epoch, after 5 warmup
    epochs) its last three values are 6%, 6% and 100% off (the last is 0, not 4.5e-8 at kη = 3.2).

    >>> round(float(cosine_decay(1.0, 10)(5)), 6)
    0.5
    """
    checks.check_positive_int("decay_steps", decay_steps)
    checks.check_non_negative("final_value", final_value)
    return float32_schedule(
        lambda step: (
            final_value
            + (init_value - final_value)
            * half_cosine(jnp.clip(jnp.asarray(step), 0, decay_steps), decay_steps)
        )
    )


def half_cosine(t: jax.Array | int, period: int) -> jax.Array:
    """½ · (1 + cos(π t / period)) for 0 <= t <= period, in float32, accurate near both ends.

        ½(1 + cos(πt/P)) = cos²(πt/2P) = sin²(π(P − t)/2P)

    The first form is used up to the middle and the second past it, so the value keeps its
    relative precision (~1e-7) where it approaches 0; 1 + cos(x) would cancel there. P − t is
    formed before the conversion to float, exactly for integer steps. Shared by `cosine_decay`
    and the PyTorch/timm cosine ports in `recipe.porting`.

    >>> [round(float(half_cosine(t, 4)), 4) for t in range(5)]
    [1.0, 0.8536, 0.5, 0.1464, 0.0]
    """
    t = jnp.asarray(t)
    scale = math.pi / (2 * period)
    near_start = jnp.cos(scale * t.astype(jnp.float32))
    near_end = jnp.sin(scale * (period - t).astype(jnp.float32))
    return jnp.square(jnp.where(2 * t <= period, near_start, near_end))


def polynomial_decay(
    init_value: float, decay_steps: int, final_value: float = 0.0, power: float = 1.0
) -> optax.Schedule:
    """Polynomial decay from `init_value` to `final_value` over `decay_steps` (power 1: linear).

        lr(t) = final + (init − final) · (1 − min(t, T) / T)^power

    >>> float(polynomial_decay(1.0, 10)(5))
    0.5
    """
    checks.check_positive_int("decay_steps", decay_steps)
    checks.check_non_negative("final_value", final_value)
    checks.check_positive("power", power)
    return float32_schedule(optax.polynomial_schedule(init_value, final_value, power, decay_steps))


def gradual_warmup(
    init_value: float, peak_value: float, warmup_steps: int, after: optax.Schedule
) -> optax.Schedule:
    """Gradual warmup (Goyal §2.2), then `after`.

    Starts at η = `init_value` (not at 0), adds (kη − η)/W every update and reaches kη =
    `peak_value` at step W = `warmup_steps`; from there on `after` runs, seeing `step − W`
    (so `after(0)` should be `peak_value`):

        lr(t) = η + (kη − η) · t / W    for t < W
        lr(t) = after(t − W)            for t ≥ W

    Built as `optax.join_schedules([warmup, after], [W])`, with the warmup computed as
    η + (kη − η) · t / W so that step 0 gives η exactly in float32 (`optax.linear_schedule`'s
    (η − kη) · 1 + kη cancels: 0.10000014 for η = 0.1, kη = 3.2).

    Args:
      init_value: η, the learning rate at step 0.
      peak_value: kη, reached at step `warmup_steps`.
      warmup_steps: W >= 0; 0 means no warmup (`after` from step 0).
      after: the schedule that follows, counted from its own step 0.

    >>> schedule = gradual_warmup(0.1, 3.2, 4, constant(3.2))
    >>> [round(float(schedule(t)), 4) for t in range(6)]
    [0.1, 0.875, 1.65, 2.425, 3.2, 3.2]
    """
    checks.check_non_negative_int("warmup_steps", warmup_steps)
    if warmup_steps == 0:
        return float32_schedule(after)

    def warmup(step):
        frac = jnp.clip(jnp.asarray(step, jnp.float32) / warmup_steps, 0.0, 1.0)
        return init_value + (peak_value - init_value) * frac

    return float32_schedule(optax.join_schedules([warmup, after], [warmup_steps]))


def constant_warmup(init_value: float, warmup_steps: int, after: optax.Schedule) -> optax.Schedule:
    """Constant warmup (Goyal §2.2): η for `warmup_steps` updates, then `after(step − W)`.

    The jump from η to kη when `after` starts is what spikes the training error at large k
    (Table 1); the paper recommends it for fine-tuning rather than for training from scratch.

    >>> schedule = constant_warmup(0.1, 2, constant(3.2))
    >>> [round(float(schedule(t)), 4) for t in range(4)]
    [0.1, 0.1, 3.2, 3.2]
    """
    checks.check_non_negative_int("warmup_steps", warmup_steps)
    if warmup_steps == 0:
        return float32_schedule(after)
    return float32_schedule(
        optax.join_schedules([optax.constant_schedule(init_value), after], [warmup_steps])
    )


def warmup_multiplier_schedule(
    base_lr: float,
    multiplier: float,
    warmup_steps: int,
    after: Callable[[float], optax.Schedule] | None = None,
) -> optax.Schedule:
    """The study note's `GradualWarmupScheduler`, as a pure optax schedule.

        lr(t) = base · ((m − 1) · t / T + 1)    for t ≤ T
        lr(t) = after(m · base)(t − T)          for t > T

    Boundary convention: at t = T the warmup formula gives m · base, and the after-schedule,
    built from the peak m · base, has its step 0 at t = T too; both agree there, so the peak is
    reached at T and the after-schedule takes over immediately (m · base is not held an extra
    step). m = 1 keeps `base` flat for T steps.

    Unlike the PyTorch original, the after-schedule is *built* from m · base (a cosine decays from
    the peak, not from `base`), the multiplier is never lost when it starts, and the position is
    the optimizer step, so a resumed run continues exactly.

    Args:
      base_lr: the learning rate at step 0.
      multiplier: m >= 1, the peak is m · base_lr.
      warmup_steps: T > 0, the step at which the peak is reached.
      after: a factory `peak -> schedule`, e.g. `lambda peak: cosine_decay(peak, 1000)`; None
        keeps the peak constant.

    Raises:
      ValueError: if `multiplier` < 1 (the original raises too) or `warmup_steps` <= 0.

    >>> schedule = warmup_multiplier_schedule(0.1, 8.0, 4)
    >>> [round(float(schedule(t)), 4) for t in (0, 2, 4, 5)]
    [0.1, 0.45, 0.8, 0.8]
    """
    checks.check_positive("base_lr", base_lr)
    if not multiplier >= 1.0:
        raise ValueError(f"multiplier must be >= 1 (peak = multiplier · base_lr), got {multiplier}")
    checks.check_positive_int("warmup_steps", warmup_steps)
    peak = multiplier * base_lr
    after_schedule = constant(peak) if after is None else after(peak)
    return gradual_warmup(base_lr, peak, warmup_steps, after_schedule)


PAPER_EPOCHS = 90
PAPER_WARMUP_EPOCHS = 5
PAPER_DECAY_EPOCHS = (30, 60, 80)


def paper_decay_epochs(epochs: float, warmup_epochs: float = 0.0) -> tuple[float, ...]:
    """Goyal §5.1's ÷10 milestones (epochs 30, 60, 80 of 90) placed on a run of another length.

    The paper's run (90 epochs, the first 5 warmup) is mapped onto this one: milestones keep
    their share of the run, m · N / 90, unless the warmup W takes a larger share than the
    paper's 5 of 90; then they keep their share of the epochs after warmup, so they always
    follow it:

        A = max(W, 5 · N / 90),     milestone_i = A + (N − A) · (m_i − 5) / 85

    (with A = 5 · N / 90 this is exactly m_i · N / 90). At N = 90 and W ≤ 5 it gives the paper's
    30, 60 and 80.

    Args:
      epochs: N, the length of the run in epochs, > 0.
      warmup_epochs: W, the warmup length in epochs (0 without warmup), in [0, N).

    >>> paper_decay_epochs(90, 5)
    (30.0, 60.0, 80.0)
    >>> paper_decay_epochs(45)
    (15.0, 30.0, 40.0)
    >>> [round(e, 2) for e in paper_decay_epochs(15, 2)]
    [5.82, 10.41, 13.47]
    """
    checks.check_positive("epochs", epochs)
    check_warmup_epochs(warmup_epochs, epochs)
    anchor = max(float(warmup_epochs), PAPER_WARMUP_EPOCHS * epochs / PAPER_EPOCHS)
    span = PAPER_EPOCHS - PAPER_WARMUP_EPOCHS
    return tuple(
        anchor + (epochs - anchor) * (m - PAPER_WARMUP_EPOCHS) / span for m in PAPER_DECAY_EPOCHS
    )


def check_warmup_epochs(
    warmup_epochs: float, epochs: float, *, names: tuple[str, str] = ("warmup_epochs", "epochs")
) -> float:
    """The warmup length: a finite number of epochs >= 0 and shorter than the run.

    `names` are the argument names used in the message (the trainer passes its config fields).
    """
    warmup_epochs = checks.check_non_negative(names[0], warmup_epochs)
    if warmup_epochs >= epochs:
        raise ValueError(f"{names[0]} must be < {names[1]} ({epochs:g}), got {warmup_epochs:g}")
    return warmup_epochs


def check_decay_epochs(
    decay_epochs: Sequence[float],
    warmup_epochs: float,
    epochs: float,
    *,
    names: tuple[str, str, str] = ("decay_epochs", "warmup_epochs", "epochs"),
) -> tuple[float, ...]:
    """Step-decay milestones: strictly increasing epochs after the warmup and before the end.

    Each milestone m must satisfy W < m < N (W = `warmup_epochs`, 0 without warmup; N =
    `epochs`): a decay inside the warmup would be overridden by it, and one at or past the end
    never happens. `names` are the argument names used in the message.

    >>> check_decay_epochs((30, 60, 80), 5, 90)
    (30, 60, 80)
    """
    decay_name, warmup_name, epochs_name = names
    milestones = checks.check_increasing(decay_name, decay_epochs)
    if not milestones:
        raise ValueError(f"{decay_name} must hold at least one epoch for a step decay, got ()")
    if milestones[0] <= warmup_epochs or milestones[-1] >= epochs:
        raise ValueError(
            f"{decay_name} must lie strictly between {warmup_name} ({warmup_epochs:g}) and "
            f"{epochs_name} ({epochs:g}), got {milestones!r}"
        )
    return milestones


def check_decay_updates(
    decay_epochs: Sequence[float],
    warmup_epochs: float,
    epochs: float,
    steps_per_epoch: int,
    *,
    names: tuple[str, str] = ("decay_epochs", "warmup_epochs"),
) -> tuple[int, ...]:
    """The step decay's boundaries in updates, each a distinct update after the warmup's end
    and before the last update (milestones that `check_decay_epochs` accepts can still round to
    the same update when an epoch has few updates). `names` are the argument names used in the
    message.

    >>> check_decay_updates((30, 60, 80), 5, 90, 156)
    (4680, 9360, 12480)
    """
    warmup_steps = epochs_to_steps(warmup_epochs, steps_per_epoch, name=names[1])
    total_steps = epochs_to_steps(epochs, steps_per_epoch)
    boundaries = tuple(epochs_to_steps(e, steps_per_epoch) for e in decay_epochs)
    steps = (warmup_steps, *boundaries, total_steps)
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError(
            f"{names[0]} {tuple(decay_epochs)!r} fall on updates {list(boundaries)} at "
            f"{steps_per_epoch} updates per epoch; they must be distinct updates after "
            f"update {warmup_steps} (where {names[1]} end) and before update {total_steps}"
        )
    return boundaries


def check_poly_end_lr(poly_end_lr: float, peak_lr: float, *, name: str = "poly_end_lr") -> float:
    """The learning rate the 'poly' decay ends at: in [0, peak]. `name` is used in the message.

    >>> check_poly_end_lr(1e-4, 3.2)
    0.0001
    """
    checks.check_non_negative(name, poly_end_lr)
    if poly_end_lr > peak_lr:
        raise ValueError(
            f"{name} must be a number in [0, {peak_lr:g}] (the peak learning rate), "
            f"got {poly_end_lr!r}"
        )
    return poly_end_lr


@dataclasses.dataclass(frozen=True)
class GoyalSchedule:
    """The resolved learning-rate recipe; call it like an optax schedule.

    Attributes:
      base_lr: η, the learning rate at `base_batch_size`.
      peak_lr: kη = η · batch / base_batch (the linear scaling rule).
      warmup_lr: where the warmup starts: η (kη if k < 1).
      warmup: 'gradual', 'constant' or 'none'.
      warmup_steps: updates spent in warmup.
      decay: 'step', 'cosine', 'linear', 'poly' or 'constant'.
      decay_epochs: the epochs of the 'step' decay's milestones (as given, or the paper's).
      decay_boundaries: absolute steps at which the 'step' decay multiplies by `decay_factor`.
      decay_factor: the 'step' decay multiplier.
      poly_power: the 'poly' decay's power.
      poly_end_lr: the learning rate the 'poly' decay reaches at `total_steps`.
      total_steps: updates in the whole run.
      steps_per_epoch: optimizer updates per epoch.
    """

    base_lr: float
    peak_lr: float
    warmup_lr: float
    warmup: str
    warmup_steps: int
    decay: str
    decay_epochs: tuple[float, ...]
    decay_boundaries: tuple[int, ...]
    decay_factor: float
    poly_power: float
    poly_end_lr: float
    total_steps: int
    steps_per_epoch: int
    schedule: optax.Schedule = dataclasses.field(repr=False, compare=False)

    def __call__(self, step: jax.Array | int) -> jax.Array:
        return self.schedule(step)

    @property
    def initial_lr(self) -> float:
        """The learning rate of the first update, known without running the schedule."""
        return self.warmup_lr if self.warmup_steps else self.peak_lr


def goyal_schedule(
    *,
    batch_size: int,
    steps_per_epoch: int,
    epochs: float,
    base_lr: float = 0.1,
    base_batch_size: int = 256,
    warmup: str = "gradual",
    warmup_epochs: float = 5,
    decay: str = "step",
    decay_epochs: Sequence[float] | None = None,
    decay_factor: float = 0.1,
    poly_power: float = 2.0,
    poly_end_lr: float = 0.0,
    warmup_init_lr: float | None = None,
) -> GoyalSchedule:
    """The whole Goyal et al. learning-rate schedule (§2.1, §2.2, §5.1).

    The peak is kη = `base_lr` · `batch_size` / `base_batch_size`; the warmup ('gradual': η → kη
    linearly per update; 'constant': η flat; 'none') lasts `warmup_epochs` (for k < 1 it starts
    at kη, not η); then the decay runs until `epochs`:

    * 'step': kη · `decay_factor` ^ i after the i-th of `decay_epochs` (absolute epochs, counted
      from the start of training, warmup included: Goyal's 30, 60, 80 of 90; by default
      `paper_decay_epochs(epochs, warmup_epochs)`, the same milestones placed on this run);
    * 'cosine' / 'linear': from kη to 0 over the epochs after warmup;
    * 'poly': end + (kη − end) · (1 − s/S)^p over the S updates after warmup (s counted from the
      end of warmup), with p = `poly_power` and end = `poly_end_lr`: the MLPerf ResNet-50 LARS
      recipe's decay (p = 2, end 1e-4; mlcommons/training_results_v0.7, Google's JAX
      submission, `polynomial_learning_rate_fn`); it reaches `poly_end_lr` at `total_steps`;
    * 'constant': kη.

    Args:
      batch_size: global batch of one optimizer update (kn).
      steps_per_epoch: optimizer updates per epoch.
      epochs: length of training in epochs.
      base_lr: η at `base_batch_size`.
      base_batch_size: reference batch (256 in the paper).
      warmup: one of `WARMUP_KINDS`.
      warmup_epochs: warmup length in epochs (may be fractional).
      decay: one of `DECAY_KINDS`.
      decay_epochs: for 'step', the epochs at which to decay, strictly between the end of
        warmup and `epochs`; None places the paper's milestones (`paper_decay_epochs`).
      decay_factor: for 'step', the multiplier, in (0, 1].
      poly_power: for 'poly', the power p > 0 (2 in the MLPerf recipe; 1 is linear).
      poly_end_lr: for 'poly', the final learning rate, in [0, kη].
      warmup_init_lr: the warmup's first rate, > 0, in place of η = `base_lr` (the paper's),
        e.g. the stability edge `recipe.stability_edge_learning_rate` of the sharpness at
        initialisation (Kalra & Barkeshli 2024); at most kη, as η is.

    Returns:
      A `GoyalSchedule`: callable on the step, and carrying the resolved numbers.

    >>> schedule = goyal_schedule(batch_size=8192, steps_per_epoch=156, epochs=90)
    >>> schedule.peak_lr, schedule.warmup_steps, schedule.decay_boundaries
    (3.2, 780, (4680, 9360, 12480))
    """
    checks.check_choice("warmup", warmup, WARMUP_KINDS)
    checks.check_choice("decay", decay, DECAY_KINDS)
    peak_lr = scaled_learning_rate(base_lr, batch_size, base_batch_size)
    checks.check_positive("epochs", epochs)
    total_steps = epochs_to_steps(epochs, steps_per_epoch)
    checks.check_positive_int("epochs × steps_per_epoch", total_steps)
    warmup_epochs = 0.0 if warmup == "none" else check_warmup_epochs(warmup_epochs, epochs)
    warmup_steps = epochs_to_steps(warmup_epochs, steps_per_epoch, name="warmup_epochs")
    boundaries: tuple[int, ...] = ()
    if decay == "step":
        checks.check_interval("decay_factor", decay_factor, 0.0, 1.0, low_closed=False)
        if decay_epochs is None:
            decay_epochs = paper_decay_epochs(epochs, warmup_epochs)
        decay_epochs = check_decay_epochs(decay_epochs, warmup_epochs, epochs)
        boundaries = check_decay_updates(decay_epochs, warmup_epochs, epochs, steps_per_epoch)
        after = step_decay(peak_lr, [b - warmup_steps for b in boundaries], decay_factor)
    elif decay in ("cosine", "linear"):
        decay_steps = max(total_steps - warmup_steps, 1)
        after = (
            cosine_decay(peak_lr, decay_steps)
            if decay == "cosine"
            else polynomial_decay(peak_lr, decay_steps)
        )
    elif decay == "poly":
        check_poly_end_lr(poly_end_lr, peak_lr)
        after = polynomial_decay(
            peak_lr, max(total_steps - warmup_steps, 1), final_value=poly_end_lr, power=poly_power
        )
    else:
        after = constant(peak_lr)

    # Warmup starts at η, the base batch's rate (or `warmup_init_lr`); a batch smaller than the
    # base (k < 1) has nothing to warm up to, so its warmup stays at kη instead of ramping down.
    start = base_lr if warmup_init_lr is None else warmup_init_lr
    warmup_lr = min(checks.check_positive("warmup_init_lr", start), peak_lr)
    if warmup == "gradual":
        schedule = gradual_warmup(warmup_lr, peak_lr, warmup_steps, after)
    elif warmup == "constant":
        schedule = constant_warmup(warmup_lr, warmup_steps, after)
    else:
        schedule = after
    return GoyalSchedule(
        base_lr=base_lr,
        peak_lr=peak_lr,
        warmup_lr=warmup_lr,
        warmup=warmup,
        warmup_steps=warmup_steps,
        decay=decay,
        decay_epochs=tuple(decay_epochs) if decay == "step" else (),
        decay_boundaries=boundaries,
        decay_factor=decay_factor,
        poly_power=poly_power,
        poly_end_lr=poly_end_lr,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        schedule=schedule,
    )
