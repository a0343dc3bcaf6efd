"""PyTorch and timm learning-rate schedulers as optax schedules, step for step.

A PyTorch scheduler that is stepped once per optimizer update (`optimizer.step();
scheduler.step()`) gives update t (counted from 0) the learning rate it holds after t calls of
`scheduler.step()`, i.e. at `last_epoch = t`. Each constructor here returns an optax schedule
`lr(t)` of the update count t that equals that value, with arguments named as in
`torch.optim.lr_scheduler` (the optimizer's `lr` becomes `base_lr`):

=================================================  ============================================
PyTorch                                            recipe.porting
=================================================  ============================================
`LinearLR(opt, start_factor, end_factor, total)`   `linear_lr(base_lr, start_factor, ...)`
`ConstantLR(opt, factor, total_iters)`             `constant_lr(base_lr, factor, total_iters)`
`StepLR(opt, step_size, gamma)`                    `step_lr(base_lr, step_size, gamma)`
`MultiStepLR(opt, milestones, gamma)`              `multistep_lr(base_lr, milestones, gamma)`
`ExponentialLR(opt, gamma)`                        `exponential_lr(base_lr, gamma)`
`CosineAnnealingLR(opt, T_max, eta_min)`           `cosine_annealing_lr(base_lr, T_max, eta_min)`
`SequentialLR(opt, schedulers, milestones)`        `sequential_lr(schedules, milestones)`
timm `*LRScheduler(warmup_t, warmup_lr_init, …)`   `timm_warmup(schedule, base_lr, warmup_t, …)`
timm `create_scheduler_v2(sched=…, …)`             `timm_scheduler(base_lr, sched=…, …)`
=================================================  ============================================

PyTorch computes most of these recursively (each step multiplies the previous learning rate);
its recursions reproduce the documented closed forms in exact arithmetic, and the closed forms
are what is computed here, in float32, arranged so that the relative error stays near float32
rounding (~1e-7) even where a cosine or a linear ramp approaches zero.

A recipe that steps its scheduler once per *epoch* (torchvision's reference scripts, timm's
default) is ported with `stepped_per_epoch(schedule, steps_per_epoch)`, which holds each value
for a whole epoch; Goyal et al.'s gradual warmup changes the rate every *update* instead.

Every schedule is a pure, jit-safe function of the update count, so a resumed run that
restores the optimizer state continues exactly, which PyTorch's stateful schedulers only do
when their state_dict is saved and restored too.
"""

import collections
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from recipe import checks
from recipe.schedules import float32_schedule, half_cosine

TIMM_SCHEDULES = ("cosine", "step", "multistep")


def linear_lr(
    base_lr: float, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5
) -> optax.Schedule:
    """`torch.optim.lr_scheduler.LinearLR`: a linear ramp of a multiplicative factor.

        lr(t) = base_lr · (start_factor + (end_factor − start_factor) · min(t, T) / T)

    with T = `total_iters`: `start_factor · base_lr` at t = 0, `end_factor · base_lr` from t = T
    on. As a warmup (torchvision's `--lr-warmup-method linear`), `start_factor` is
    `--lr-warmup-decay`; Goyal et al.'s gradual warmup from η to kη is `start_factor = 1/k`.

    Args:
      base_lr: the optimizer's learning rate (PyTorch's `lr`, the group's `initial_lr`); >= 0.
      start_factor: factor at t = 0, in (0, 1] (PyTorch rejects the rest too).
      end_factor: factor from t = `total_iters` on, in [0, 1].
      total_iters: T, updates the ramp lasts; > 0 (PyTorch's closed form divides by it).

    Returns:
      A float32 optax schedule of the update count.

    Raises:
      ValueError: if an argument is outside its range.

    >>> schedule = linear_lr(0.1, start_factor=0.25, total_iters=3)
    >>> [round(float(schedule(t)), 6) for t in range(5)]
    [0.025, 0.05, 0.075, 0.1, 0.1]
    """
    checks.check_non_negative("base_lr", base_lr)
    _check_factor_open_at_zero("start_factor", start_factor)
    checks.check_in_unit_interval("end_factor", end_factor)
    checks.check_positive_int("total_iters", total_iters)

    def schedule(step):
        done = jnp.clip(jnp.asarray(step), 0, total_iters).astype(jnp.float32)
        # (s · (T − m) + e · m) / T: a sum of non-negative terms, so no cancellation when the
        # ramp goes down to end_factor = 0.
        factor = (start_factor * (total_iters - done) + end_factor * done) / total_iters
        return base_lr * factor

    return float32_schedule(schedule)


def constant_lr(base_lr: float, factor: float = 1.0 / 3, total_iters: int = 5) -> optax.Schedule:
    """`torch.optim.lr_scheduler.ConstantLR`: `factor · base_lr` for the first T updates.

        lr(t) = base_lr · factor    for t < T
        lr(t) = base_lr             for t ≥ T

    with T = `total_iters`. As a warmup this is Goyal et al.'s constant warmup (torchvision's
    `--lr-warmup-method constant`).

    Args:
      base_lr: the optimizer's learning rate; >= 0.
      factor: in [0, 1] (PyTorch rejects the rest too).
      total_iters: T > 0. (PyTorch's recursive form with `total_iters=0` keeps
        `factor · base_lr` forever while its closed form gives `base_lr`; it is rejected here.)

    >>> schedule = constant_lr(0.1, factor=0.5, total_iters=2)
    >>> [round(float(schedule(t)), 6) for t in range(4)]
    [0.05, 0.05, 0.1, 0.1]
    """
    checks.check_non_negative("base_lr", base_lr)
    checks.check_in_unit_interval("factor", factor)
    checks.check_positive_int("total_iters", total_iters)
    return float32_schedule(
        lambda step: jnp.where(jnp.asarray(step) < total_iters, base_lr * factor, base_lr)
    )


def step_lr(base_lr: float, step_size: int, gamma: float = 0.1) -> optax.Schedule:
    """`torch.optim.lr_scheduler.StepLR`: ×gamma every `step_size` updates.

        lr(t) = base_lr · gamma^⌊t / step_size⌋

    torchvision's default `--lr-scheduler steplr --lr-step-size 30 --lr-gamma 0.1`, stepped per
    epoch: `stepped_per_epoch(step_lr(lr, 30), steps_per_epoch)`.

    Args:
      base_lr: the optimizer's learning rate; >= 0.
      step_size: period of the decay in updates; > 0.
      gamma: the multiplier; >= 0.

    >>> schedule = step_lr(1.0, step_size=2, gamma=0.5)
    >>> [float(schedule(t)) for t in range(5)]
    [1.0, 1.0, 0.5, 0.5, 0.25]
    """
    checks.check_non_negative("base_lr", base_lr)
    checks.check_positive_int("step_size", step_size)
    checks.check_non_negative("gamma", gamma)
    return float32_schedule(lambda step: base_lr * _power(gamma, jnp.asarray(step) // step_size))


def multistep_lr(base_lr: float, milestones: Sequence[int], gamma: float = 0.1) -> optax.Schedule:
    """`torch.optim.lr_scheduler.MultiStepLR`: ×gamma at each milestone.

        lr(t) = base_lr · gamma^bisect_right(sorted(milestones), t)

    The decay applies *at* the milestone update, as in `recipe.schedules.step_decay` (Goyal's
    ÷10 at epochs 30, 60 and 80). Like PyTorch, which keeps the milestones in a `Counter`, a
    milestone listed twice multiplies by gamma² and the order of the list does not matter.

    Args:
      base_lr: the optimizer's learning rate; >= 0.
      milestones: updates at which to decay; integers >= 0.
      gamma: the multiplier; >= 0.

    >>> schedule = multistep_lr(1.0, [2, 4], gamma=0.1)
    >>> [round(float(schedule(t)), 6) for t in range(6)]
    [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    """
    checks.check_non_negative("base_lr", base_lr)
    for i, milestone in enumerate(milestones):
        checks.check_non_negative_int(f"milestones[{i}]", milestone)
    checks.check_non_negative("gamma", gamma)
    counts = collections.Counter(int(m) for m in milestones)
    scales = {milestone: gamma**count for milestone, count in counts.items()}
    return float32_schedule(optax.piecewise_constant_schedule(base_lr, scales))


def exponential_lr(base_lr: float, gamma: float) -> optax.Schedule:
    """`torch.optim.lr_scheduler.ExponentialLR`: lr(t) = base_lr · gamma^t.

    >>> [round(float(exponential_lr(1.0, 0.5)(t)), 6) for t in range(4)]
    [1.0, 0.5, 0.25, 0.125]
    """
    checks.check_non_negative("base_lr", base_lr)
    checks.check_non_negative("gamma", gamma)
    return float32_schedule(lambda step: base_lr * _power(gamma, jnp.asarray(step)))


def cosine_annealing_lr(base_lr: float, T_max: int, eta_min: float = 0.0) -> optax.Schedule:
    """`torch.optim.lr_scheduler.CosineAnnealingLR` stepped once per update.

        lr(t) = eta_min + (base_lr − eta_min) · ½ · (1 + cos(π · t / T_max))

    for *every* t ≥ 0. PyTorch documents this closed form for t ≤ T_max and implements a
    recursion (η_t from η_{t−1}, with a special case at t ≡ T_max + 1 mod 2·T_max) that, started
    from `base_lr`, reproduces it at every step, up to floating-point rounding. So past T_max the
    learning rate does not stay at eta_min: it follows the cosine back up, periodically with
    period 2·T_max (eta_min at T_max, 3·T_max, …; base_lr at 2·T_max, 4·T_max, …). Set T_max to
    the length of training (torchvision: `epochs − lr_warmup_epochs`) to avoid the climb.

    This differs from `recipe.schedules.cosine_decay`, which holds its final value after T
    steps (optax's and timm's behaviour, and the recipe's `decay='cosine'`).

    Args:
      base_lr: the optimizer's learning rate; >= 0.
      T_max: half period in updates; > 0.
      eta_min: the minimum; >= 0.

    >>> schedule = cosine_annealing_lr(1.0, T_max=4)
    >>> [round(float(schedule(t)), 4) for t in (0, 2, 4, 6, 8)]
    [1.0, 0.5, 0.0, 0.5, 1.0]
    """
    checks.check_non_negative("base_lr", base_lr)
    checks.check_positive_int("T_max", T_max)
    checks.check_non_negative("eta_min", eta_min)

    def schedule(step):
        # Reduce modulo the period with integers, then fold onto [0, T_max] by symmetry.
        phase = jnp.mod(jnp.asarray(step), 2 * T_max)
        return eta_min + (base_lr - eta_min) * half_cosine(
            jnp.minimum(phase, 2 * T_max - phase), T_max
        )

    return float32_schedule(schedule)


def sequential_lr(schedules: Sequence[optax.Schedule], milestones: Sequence[int]) -> optax.Schedule:
    """`torch.optim.lr_scheduler.SequentialLR`: schedule i runs from milestone i−1, restarted.

        lr(t) = schedules[i](t − milestones[i−1]),   i = bisect_right(milestones, t)

    At update t = milestones[i−1] SequentialLR calls the next scheduler at its step 0 (its closed
    form at `last_epoch = 0`), so each schedule starts from its own beginning. PyTorch's
    schedulers all read the same `initial_lr` of the optimizer, so build every schedule with the
    optimizer's learning rate as `base_lr`. This is `optax.join_schedules`.

    torchvision's warmup (`--lr-warmup-epochs 5 --lr-warmup-method linear
    --lr-warmup-decay 0.01`, per epoch) is

        sequential_lr([linear_lr(lr, 0.01, total_iters=5), main], milestones=[5])

    Args:
      schedules: the schedules, each counted from its own step 0.
      milestones: updates at which the next schedule starts: len(schedules) − 1 integers > 0,
        non-decreasing. (At milestone 0 PyTorch would run the first scheduler's step 0 and then
        the second from its step 0 at t = 1, unlike the formula above; it is rejected.)

    Raises:
      ValueError: if the lengths do not match or a milestone is out of range.

    >>> schedule = sequential_lr([constant_lr(1.0, 0.1, 2), cosine_annealing_lr(1.0, 2)], [2])
    >>> [round(float(schedule(t)), 4) for t in range(5)]
    [0.1, 0.1, 1.0, 0.5, 0.0]
    """
    if len(schedules) < 1:
        raise ValueError("schedules must hold at least one schedule, got none")
    if len(milestones) != len(schedules) - 1:
        raise ValueError(
            f"milestones must have len(schedules) − 1 = {len(schedules) - 1} entries (one per "
            f"switch), got {len(milestones)}"
        )
    for i, milestone in enumerate(milestones):
        checks.check_positive_int(f"milestones[{i}]", milestone)
    if list(milestones) != sorted(milestones):
        raise ValueError(f"milestones must be non-decreasing, got {list(milestones)}")
    return float32_schedule(optax.join_schedules(list(schedules), [int(m) for m in milestones]))


def stepped_per_epoch(schedule: optax.Schedule, steps_per_epoch: int) -> optax.Schedule:
    """A schedule stepped once per epoch, as a schedule of the update count.

        lr(t) = schedule(⌊t / steps_per_epoch⌋)

    For recipes whose scheduler is stepped after every epoch (torchvision's reference scripts,
    timm without `--sched-on-updates`): give the wrapped schedule its durations in epochs.

    >>> schedule = stepped_per_epoch(step_lr(1.0, step_size=1, gamma=0.5), steps_per_epoch=2)
    >>> [float(schedule(t)) for t in range(5)]
    [1.0, 1.0, 0.5, 0.5, 0.25]
    """
    checks.check_positive_int("steps_per_epoch", steps_per_epoch)
    return float32_schedule(lambda step: schedule(jnp.asarray(step) // steps_per_epoch))


def timm_warmup(
    schedule: optax.Schedule,
    base_lr: float,
    warmup_t: int,
    warmup_lr_init: float = 0.0,
    warmup_prefix: bool = False,
) -> optax.Schedule:
    """timm's warmup (`warmup_t`, `warmup_lr_init`, `warmup_prefix` of its schedulers).

        lr(t) = warmup_lr_init + t · (base_lr − warmup_lr_init) / warmup_t     for t < warmup_t
        lr(t) = schedule(t − warmup_t)   if warmup_prefix                     for t ≥ warmup_t
        lr(t) = schedule(t)              otherwise

    Without `warmup_prefix` (the default of timm's cosine scheduler and of its
    `create_scheduler_v2`) the main schedule runs from t = 0 and the warmup only overrides its
    first `warmup_t` values, so the warmup eats into it (a cosine of `t_initial` updates then
    ends at `t_initial`, warmup included). With it (the default of timm's step and multistep
    schedulers) the main schedule starts after the warmup.

    The warmup reaches `base_lr` only in the limit: its last value (t = warmup_t − 1) is one
    increment short, and the main schedule takes over at t = warmup_t. timm's default
    `warmup_lr_init` is 0 in its scheduler classes (a first update at lr 0) and 1e-5 in
    `create_scheduler_v2`; Goyal et al. start at η = base_lr / k instead.

    Args:
      schedule: the main schedule (e.g. `cosine_annealing_lr`, or `timm_scheduler`'s).
      base_lr: the optimizer's learning rate, which the warmup heads for; >= 0.
      warmup_t: warmup length in updates; >= 0 (0: `schedule` unchanged).
      warmup_lr_init: learning rate at t = 0; >= 0.
      warmup_prefix: shift the main schedule by `warmup_t`.

    >>> main = constant_lr(1.0, factor=1.0, total_iters=1)
    >>> schedule = timm_warmup(main, 1.0, warmup_t=4, warmup_lr_init=0.2)
    >>> [round(float(schedule(t)), 4) for t in range(6)]
    [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    """
    checks.check_non_negative("base_lr", base_lr)
    checks.check_non_negative_int("warmup_t", warmup_t)
    checks.check_non_negative("warmup_lr_init", warmup_lr_init)
    if warmup_t == 0:
        return float32_schedule(schedule)
    increment = (base_lr - warmup_lr_init) / warmup_t

    def warmed_up(step):
        step = jnp.asarray(step)
        main = schedule(step - warmup_t if warmup_prefix else step)
        return jnp.where(step < warmup_t, warmup_lr_init + step * increment, main)

    return float32_schedule(warmed_up)


def timm_scheduler(
    base_lr: float,
    *,
    updates_per_epoch: int,
    sched: str = "cosine",
    num_epochs: int = 300,
    decay_epochs: float = 90,
    decay_milestones: Sequence[int] = (90, 180, 270),
    decay_rate: float = 0.1,
    min_lr: float = 0.0,
    warmup_lr: float = 1e-5,
    warmup_epochs: int = 0,
    warmup_prefix: bool = False,
    cycle_decay: float = 0.1,
    cycle_limit: int = 1,
    step_on_epochs: bool = True,
) -> optax.Schedule:
    """timm's `create_scheduler_v2(...)` (its `train.py` flags) as a schedule of the update count.

    The keyword arguments are `create_scheduler_v2`'s (`--sched`, `--epochs`, `--decay-epochs`,
    `--decay-milestones`, `--decay-rate`, `--min-lr`, `--warmup-lr`, `--warmup-epochs`,
    `--warmup-prefix`, `--lr-cycle-decay`, `--lr-cycle-limit`; `step_on_epochs=False` is
    `--sched-on-updates`). timm's `train.py` calls `scheduler.step(epoch + 1)` at the end of
    each epoch, so epoch e runs at the scheduler's value at t = e; with `step_on_epochs=False` it
    calls `scheduler.step_update(num_updates)` after each update, so update u runs at t = u
    (every duration × updates_per_epoch). At t = 0 nothing has been called yet: the first epoch
    or update runs at the value the scheduler's constructor sets, `warmup_lr` with a warmup and
    `base_lr` without, which differs from timm's formula at t = 0 only for a multistep milestone
    of 0 or 1. This returns lr(u) for update u, holding each value for a whole epoch in the
    first case. With W = warmup_t, the main schedules are, at t' = t − W (`warmup_prefix`) or
    t' = t:

    * 'cosine' (`CosineLRScheduler`, cycle_mul = 1, k_decay = 1): with T = t_initial (the epochs),
      i = ⌊t'/T⌋, lr = min_lr + ½ (base_lr · cycle_decay^i − min_lr)(1 + cos(π (t' − iT)/T)) while
      i < cycle_limit, then min_lr (the cooldown epochs);
    * 'step' (`StepLRScheduler`): base_lr · decay_rate^⌊t'/decay_t⌋;
    * 'multistep' (`MultiStepLRScheduler`): base_lr · decay_rate^bisect_right(milestones, t' + 1),
      so milestone m takes effect at t' = m − 1, one epoch (or update) *before* m, where
      PyTorch's `MultiStepLR` (`multistep_lr`) and timm's own 'step' decay at m. Every timm
      release with the class (0.5.4 through 1.0.x) computes it so (`get_curr_decay_steps`), and
      it is kept: huggingface/pytorch-image-models#2745 and #2753, which would drop the + 1, were
      closed unmerged. timm assumes sorted milestones; unsorted ones are rejected here;

    and the warmup is `timm_warmup(main, base_lr, W, warmup_lr, warmup_prefix)`.

    Args:
      base_lr: the optimizer's learning rate (timm's `--lr`, or `--lr-base` scaled by the
        global batch as `recipe.schedules.scaled_learning_rate` does).
      updates_per_epoch: optimizer updates per epoch; > 0 (1 gives every duration in updates).
      sched: one of `TIMM_SCHEDULES`.
      num_epochs: the cosine's t_initial; > 0.
      decay_epochs: the step decay's period; > 0.
      decay_milestones: the multistep decay's epochs; integers >= 0.
      decay_rate: the step / multistep multiplier; >= 0.
      min_lr: the cosine's floor; >= 0.
      warmup_lr: `warmup_lr_init`; >= 0.
      warmup_epochs: `warmup_t` in epochs; integer >= 0.
      warmup_prefix: start the main schedule after the warmup.
      cycle_decay: the cosine's peak multiplier per restart; >= 0.
      cycle_limit: the cosine's number of cycles; integer > 0.
      step_on_epochs: timm's default; False for `--sched-on-updates`.

    >>> kwargs = dict(sched="step", decay_epochs=2, decay_rate=0.5, warmup_epochs=2,
    ...               warmup_lr=0.0, updates_per_epoch=1)
    >>> [round(float(timm_scheduler(1.0, **kwargs)(t)), 4) for t in range(6)]
    [0.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    >>> prefixed = timm_scheduler(1.0, warmup_prefix=True, **kwargs)
    >>> [round(float(prefixed(t)), 4) for t in range(6)]
    [0.0, 0.5, 1.0, 1.0, 0.5, 0.5]
    >>> multistep = timm_scheduler(1.0, sched="multistep", decay_milestones=[3],
    ...                            updates_per_epoch=1)
    >>> [round(float(multistep(t)), 4) for t in range(5)]  # milestone 3 applies at t = 2
    [1.0, 1.0, 0.1, 0.1, 0.1]
    """
    checks.check_non_negative("base_lr", base_lr)
    checks.check_positive_int("updates_per_epoch", updates_per_epoch)
    checks.check_choice("sched", sched, TIMM_SCHEDULES)
    checks.check_positive_int("num_epochs", num_epochs)
    checks.check_positive("decay_epochs", decay_epochs)
    for i, milestone in enumerate(decay_milestones):
        checks.check_non_negative_int(f"decay_milestones[{i}]", milestone)
    if list(decay_milestones) != sorted(decay_milestones):
        raise ValueError(
            f"decay_milestones must be non-decreasing (timm bisects them), got "
            f"{list(decay_milestones)}"
        )
    checks.check_non_negative("decay_rate", decay_rate)
    checks.check_non_negative("min_lr", min_lr)
    checks.check_non_negative("warmup_lr", warmup_lr)
    checks.check_non_negative_int("warmup_epochs", warmup_epochs)
    checks.check_non_negative("cycle_decay", cycle_decay)
    checks.check_positive_int("cycle_limit", cycle_limit)

    # timm's "time" unit: epochs, or updates with every duration converted.
    unit = 1 if step_on_epochs else updates_per_epoch
    t_initial, warmup_t = num_epochs * unit, warmup_epochs * unit
    decay_t = decay_epochs * unit
    milestones = [int(m) * unit for m in decay_milestones]

    if sched == "cosine":

        def main(t):
            cycle = t // t_initial
            peak = base_lr * _power(cycle_decay, cycle)
            lr = min_lr + (peak - min_lr) * half_cosine(t - cycle * t_initial, t_initial)
            return jnp.where(cycle < cycle_limit, lr, min_lr)

    elif sched == "step":

        def main(t):
            if float(decay_t).is_integer():
                decays = t // int(decay_t)
            else:
                decays = jnp.floor(t / decay_t)
            return base_lr * _power(decay_rate, decays)

    else:
        thresholds = jnp.asarray(milestones, jnp.int32)

        def main(t):
            # bisect_right(milestones, t + 1): how many milestones are <= t + 1.
            decays = jnp.sum(thresholds <= jnp.asarray(t)[..., None] + 1, axis=-1)
            return base_lr * _power(decay_rate, decays)

    warmed_up = timm_warmup(main, base_lr, warmup_t, warmup_lr, warmup_prefix)
    # Before the first `step`/`step_update` call: the constructor's value.
    initial_lr = warmup_lr if warmup_t else base_lr

    def scheduled(t):
        t = jnp.asarray(t)
        return jnp.where(t == 0, jnp.float32(initial_lr), warmed_up(t))

    if step_on_epochs:
        return stepped_per_epoch(scheduled, updates_per_epoch)
    return float32_schedule(scheduled)


def _check_factor_open_at_zero(name: str, value: object) -> None:
    checks.check_in_unit_interval(name, value)
    if value == 0:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")


def _power(base: float, exponent: jax.Array) -> jax.Array:
    """base ** exponent for a Python float base and an integer (or float) array exponent."""
    return jnp.power(jnp.float32(base), jnp.asarray(exponent, jnp.float32))
