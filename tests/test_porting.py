"""PyTorch/timm-style schedules against the PyTorch and timm formulas, in plain Python.

Two independent references, neither importing torch:

* the closed forms that PyTorch documents (`_get_closed_form_lr` of each scheduler) and timm's
  `_get_lr`, as plain float64 functions of t;
* a transliteration of what PyTorch actually runs when `scheduler.step()` is called once per
  update: the recursive ("chainable") `get_lr` of each scheduler, which multiplies the previous
  learning rate, and `SequentialLR.step`, which restarts the next scheduler through its closed
  form at a milestone.

Every configuration is compared at every step, boundaries included (t = total_iters,
milestones, T_max and past it).
"""

import bisect
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recipe import porting

RTOL = 1e-6
ATOL = 1e-9

# ---------------------------------------------------------------------------------------------
# Reference 1: PyTorch's documented closed forms (float64), t = last_epoch = updates so far.
# ---------------------------------------------------------------------------------------------


def closed_linear(t, base, start, end, total):
    return base * (start + (end - start) * min(total, t) / total)


def closed_constant(t, base, factor, total):
    return base * (factor + (t >= total) * (1 - factor))


def closed_step(t, base, step_size, gamma):
    return base * gamma ** (t // step_size)


def closed_multistep(t, base, milestones, gamma):
    return base * gamma ** bisect.bisect_right(sorted(milestones), t)


def closed_exponential(t, base, gamma):
    return base * gamma**t


def closed_cosine(t, base, t_max, eta_min):
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2


def closed_sequential(t, closed_forms, milestones):
    i = bisect.bisect_right(milestones, t)
    return closed_forms[i](t - (milestones[i - 1] if i else 0))


# ---------------------------------------------------------------------------------------------
# Reference 2: PyTorch's recursive implementation, transliterated (one param group, no torch).
# ---------------------------------------------------------------------------------------------


class Optimizer:
    def __init__(self, lr):
        self.lr = lr
        self.initial_lr = lr


class Recursive:
    """`LRScheduler.__init__` / `step` / `_update_lr` for one parameter group."""

    def __init__(self, optimizer):
        self.opt = optimizer
        self.base = optimizer.initial_lr
        self.last_epoch = -1
        self.initial_step()

    def initial_step(self):
        self.step_count = 0
        self.is_initial = True
        self.step()
        self.is_initial = False

    def step(self):
        self.step_count += 1
        self.last_epoch += 1
        self.opt.lr = self.get_lr()

    def update_closed_form(self, epoch):
        self.last_epoch = epoch
        self.opt.lr = self.closed()


class RecursiveLinear(Recursive):
    def __init__(self, optimizer, start, end, total):
        self.start, self.end, self.total = start, end, total
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch == 0:
            return self.opt.lr * self.start
        if self.is_initial or self.last_epoch > self.total:
            return self.opt.lr
        return self.opt.lr * (
            1.0
            + (self.end - self.start)
            / (self.total * self.start + (self.last_epoch - 1) * (self.end - self.start))
        )

    def closed(self):
        return closed_linear(self.last_epoch, self.base, self.start, self.end, self.total)


class RecursiveConstant(Recursive):
    def __init__(self, optimizer, factor, total):
        self.factor, self.total = factor, total
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch == 0:
            return self.opt.lr * self.factor
        if self.last_epoch != self.total:
            return self.opt.lr
        return self.opt.lr * (1.0 / self.factor)

    def closed(self):
        return closed_constant(self.last_epoch, self.base, self.factor, self.total)


class RecursiveStep(Recursive):
    def __init__(self, optimizer, step_size, gamma):
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self.opt.lr
        return self.opt.lr * self.gamma

    def closed(self):
        return closed_step(self.last_epoch, self.base, self.step_size, self.gamma)


class RecursiveMultiStep(Recursive):
    def __init__(self, optimizer, milestones, gamma):
        self.milestones, self.gamma = list(milestones), gamma
        super().__init__(optimizer)

    def get_lr(self):
        count = self.milestones.count(self.last_epoch)
        return self.opt.lr * self.gamma**count if count else self.opt.lr

    def closed(self):
        return closed_multistep(self.last_epoch, self.base, self.milestones, self.gamma)


class RecursiveExponential(Recursive):
    def __init__(self, optimizer, gamma):
        self.gamma = gamma
        super().__init__(optimizer)

    def get_lr(self):
        return self.opt.lr if self.is_initial else self.opt.lr * self.gamma

    def closed(self):
        return closed_exponential(self.last_epoch, self.base, self.gamma)


class RecursiveCosine(Recursive):
    def __init__(self, optimizer, t_max, eta_min):
        self.t_max, self.eta_min = t_max, eta_min
        super().__init__(optimizer)

    def get_lr(self):
        t, t_max, eta_min = self.last_epoch, self.t_max, self.eta_min
        if self.is_initial:
            return self.opt.lr
        if self.step_count == 1 and t > 0:
            return eta_min + (self.base - eta_min) * (1 + math.cos(t * math.pi / t_max)) / 2
        if (t - 1 - t_max) % (2 * t_max) == 0:
            return self.opt.lr + (self.base - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
        return (1 + math.cos(math.pi * t / t_max)) / (1 + math.cos(math.pi * (t - 1) / t_max)) * (
            self.opt.lr - eta_min
        ) + eta_min

    def closed(self):
        return closed_cosine(self.last_epoch, self.base, self.t_max, self.eta_min)


class RecursiveSequential:
    """`SequentialLR.__init__` and `SequentialLR.step`."""

    def __init__(self, optimizer, schedulers, milestones):
        self.opt, self.schedulers, self.milestones = optimizer, schedulers, milestones
        self.last_epoch = 0
        optimizer.lr = optimizer.initial_lr
        for scheduler in schedulers:
            scheduler.last_epoch -= 1
        schedulers[0].initial_step()

    def step(self):
        self.last_epoch += 1
        idx = bisect.bisect_right(self.milestones, self.last_epoch)
        scheduler = self.schedulers[idx]
        if idx > 0 and self.milestones[idx - 1] == self.last_epoch:
            scheduler.update_closed_form(0)
        else:
            scheduler.step()


def stepped_lrs(make, base, num_steps):
    """The lr of updates 0 … num_steps − 1: `make(optimizer)`, then one `step()` per update."""
    optimizer = Optimizer(base)
    scheduler = make(optimizer)
    lrs = []
    for _ in range(num_steps):
        lrs.append(optimizer.lr)
        scheduler.step()
    return lrs


# ---------------------------------------------------------------------------------------------
# Checks.
# ---------------------------------------------------------------------------------------------


def assert_schedule_equals(schedule, expected):
    """Each step as a Python int, and all steps at once under jit as an int32 array."""
    steps = range(len(expected))
    per_step = [schedule(t) for t in steps]
    assert all(np.asarray(v).dtype == np.float32 for v in per_step)
    np.testing.assert_allclose([float(v) for v in per_step], expected, rtol=RTOL, atol=ATOL)
    jitted = jax.jit(schedule)(jnp.arange(len(expected), dtype=jnp.int32))
    assert jitted.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(jitted), expected, rtol=RTOL, atol=ATOL)


LINEAR_CASES = [
    # base, start_factor, end_factor, total_iters, steps
    (0.1, 1 / 3, 1.0, 5, 12),  # PyTorch's defaults
    (3.2, 1 / 32, 1.0, 7, 12),  # Goyal: η → kη with k = 32
    (1.0, 1.0, 0.0, 10, 14),  # a linear decay to 0 (cancellation-prone near the end)
    (0.5, 0.05, 0.5, 1, 4),  # one-step ramp
]


@pytest.mark.parametrize("base, start, end, total, n", LINEAR_CASES)
def test_linear_lr(base, start, end, total, n):
    schedule = porting.linear_lr(base, start_factor=start, end_factor=end, total_iters=total)
    closed = [closed_linear(t, base, start, end, total) for t in range(n)]
    recursive = stepped_lrs(lambda o: RecursiveLinear(o, start, end, total), base, n)
    np.testing.assert_allclose(recursive, closed, rtol=1e-12)
    assert_schedule_equals(schedule, closed)


CONSTANT_CASES = [(0.1, 1 / 3, 5, 9), (2.0, 0.25, 1, 4), (1.0, 1.0, 3, 5)]


@pytest.mark.parametrize("base, factor, total, n", CONSTANT_CASES)
def test_constant_lr(base, factor, total, n):
    schedule = porting.constant_lr(base, factor=factor, total_iters=total)
    closed = [closed_constant(t, base, factor, total) for t in range(n)]
    recursive = stepped_lrs(lambda o: RecursiveConstant(o, factor, total), base, n)
    np.testing.assert_allclose(recursive, closed, rtol=1e-12)
    assert_schedule_equals(schedule, closed)


def test_constant_lr_factor_zero_follows_the_closed_form():
    # PyTorch's recursion divides by the factor at total_iters; the closed form is well defined.
    assert_schedule_equals(porting.constant_lr(1.0, 0.0, 2), [0.0, 0.0, 1.0, 1.0])


@pytest.mark.parametrize("base, step_size, gamma, n", [(0.1, 3, 0.1, 11), (1.0, 1, 0.5, 8)])
def test_step_lr(base, step_size, gamma, n):
    closed = [closed_step(t, base, step_size, gamma) for t in range(n)]
    recursive = stepped_lrs(lambda o: RecursiveStep(o, step_size, gamma), base, n)
    np.testing.assert_allclose(recursive, closed, rtol=1e-12)
    assert_schedule_equals(porting.step_lr(base, step_size, gamma), closed)


MULTISTEP_CASES = [
    (0.1, [3, 7], 0.1, 10),
    (1.0, [5, 2, 5], 0.5, 8),  # unordered, and a repeated milestone decays twice
    (0.4, [0, 4], 0.1, 6),  # a milestone at 0 applies to the very first update
    (3.2, [30, 60, 80], 0.1, 90),  # Goyal's epochs, one update per epoch
]


@pytest.mark.parametrize("base, milestones, gamma, n", MULTISTEP_CASES)
def test_multistep_lr(base, milestones, gamma, n):
    closed = [closed_multistep(t, base, milestones, gamma) for t in range(n)]
    recursive = stepped_lrs(lambda o: RecursiveMultiStep(o, milestones, gamma), base, n)
    np.testing.assert_allclose(recursive, closed, rtol=1e-12)
    assert_schedule_equals(porting.multistep_lr(base, milestones, gamma), closed)


def test_exponential_lr():
    closed = [closed_exponential(t, 0.5, 0.9) for t in range(30)]
    recursive = stepped_lrs(lambda o: RecursiveExponential(o, 0.9), 0.5, 30)
    np.testing.assert_allclose(recursive, closed, rtol=1e-12)
    assert_schedule_equals(porting.exponential_lr(0.5, 0.9), closed)


COSINE_CASES = [
    # base, T_max, eta_min, steps: every case runs well past T_max.
    (1.0, 10, 0.0, 46),
    (0.4, 7, 0.01, 30),
    (0.1, 1, 0.0, 6),
    (3.2, 1000, 0.0, 2600),
]


@pytest.mark.parametrize("base, t_max, eta_min, n", COSINE_CASES)
def test_cosine_annealing_lr_matches_pytorch_past_t_max(base, t_max, eta_min, n):
    closed = [closed_cosine(t, base, t_max, eta_min) for t in range(n)]
    recursive = stepped_lrs(lambda o: RecursiveCosine(o, t_max, eta_min), base, n)
    # PyTorch's recursion is the periodic closed form, not a cosine that stays at eta_min.
    np.testing.assert_allclose(recursive, closed, rtol=1e-9, atol=1e-12)
    assert_schedule_equals(porting.cosine_annealing_lr(base, t_max, eta_min), closed)
    schedule = porting.cosine_annealing_lr(base, t_max, eta_min)
    assert float(schedule(t_max)) == pytest.approx(eta_min, abs=1e-7)
    assert float(schedule(2 * t_max)) == pytest.approx(base, rel=1e-6)


def _sequential_case(kind):
    """(schedules, milestones, recursive schedulers factory, closed forms, base, steps)."""
    if kind == "torchvision linear warmup + cosine":
        base = 0.5
        return (
            [porting.linear_lr(base, 0.01, 1.0, 5), porting.cosine_annealing_lr(base, 20)],
            [5],
            lambda o: [RecursiveLinear(o, 0.01, 1.0, 5), RecursiveCosine(o, 20, 0.0)],
            [
                lambda t: closed_linear(t, base, 0.01, 1.0, 5),
                lambda t: closed_cosine(t, base, 20, 0.0),
            ],
            base,
            30,
        )
    if kind == "constant warmup + step":
        base = 0.1
        return (
            [porting.constant_lr(base, 0.1, 3), porting.step_lr(base, 4, 0.1)],
            [3],
            lambda o: [RecursiveConstant(o, 0.1, 3), RecursiveStep(o, 4, 0.1)],
            [
                lambda t: closed_constant(t, base, 0.1, 3),
                lambda t: closed_step(t, base, 4, 0.1),
            ],
            base,
            15,
        )
    base = 1.0  # three schedulers, the last starting from its own step 0
    return (
        [
            porting.linear_lr(base, 0.5, 1.0, 2),
            porting.multistep_lr(base, [2, 4], 0.5),
            porting.exponential_lr(base, 0.9),
        ],
        [3, 9],
        lambda o: [
            RecursiveLinear(o, 0.5, 1.0, 2),
            RecursiveMultiStep(o, [2, 4], 0.5),
            RecursiveExponential(o, 0.9),
        ],
        [
            lambda t: closed_linear(t, base, 0.5, 1.0, 2),
            lambda t: closed_multistep(t, base, [2, 4], 0.5),
            lambda t: closed_exponential(t, base, 0.9),
        ],
        base,
        16,
    )


@pytest.mark.parametrize(
    "kind", ["torchvision linear warmup + cosine", "constant warmup + step", "three schedulers"]
)
def test_sequential_lr_restarts_each_scheduler_at_its_milestone(kind):
    schedules, milestones, make_schedulers, closed_forms, base, n = _sequential_case(kind)
    closed = [closed_sequential(t, closed_forms, milestones) for t in range(n)]
    recursive = stepped_lrs(
        lambda o: RecursiveSequential(o, make_schedulers(o), milestones), base, n
    )
    np.testing.assert_allclose(recursive, closed, rtol=1e-9, atol=1e-12)
    assert_schedule_equals(porting.sequential_lr(schedules, milestones), closed)


def test_stepped_per_epoch_holds_each_value_for_an_epoch():
    per_epoch = [closed_linear(e, 1.0, 0.1, 1.0, 3) for e in range(5)]
    expected = [per_epoch[u // 4] for u in range(20)]
    schedule = porting.stepped_per_epoch(porting.linear_lr(1.0, 0.1, 1.0, 3), steps_per_epoch=4)
    assert_schedule_equals(schedule, expected)


# ---------------------------------------------------------------------------------------------
# timm: its schedulers' `_get_lr(t)` and the way its `train.py` drives them, in plain Python.
# ---------------------------------------------------------------------------------------------


class TimmScheduler:
    """timm's `Scheduler` + `CosineLRScheduler` / `StepLRScheduler` / `MultiStepLRScheduler`
    (timm 0.6.13–1.0.x) for one parameter group: the constructor sets the group's lr, `step`
    and `step_update` set `_get_lr(t)` when t counts epochs or updates respectively."""

    def __init__(self, opt, sched, *, t_in_epochs, warmup_t, warmup_lr_init, warmup_prefix, **kw):
        self.opt, self.sched, self.kw = opt, sched, kw
        self.base = opt.lr
        self.t_in_epochs = t_in_epochs
        self.warmup_t, self.warmup_lr_init = warmup_t, warmup_lr_init
        self.warmup_prefix = warmup_prefix
        if warmup_t:
            self.warmup_step = (self.base - warmup_lr_init) / warmup_t
            opt.lr = warmup_lr_init  # `super().update_groups(self.warmup_lr_init)`

    def get_curr_decay_steps(self, t):  # MultiStepLRScheduler's, verbatim
        return bisect.bisect_right(self.kw["decay_t"], t + 1)

    def _get_lr(self, t):
        if t < self.warmup_t:
            return self.warmup_lr_init + t * self.warmup_step
        if self.warmup_prefix:
            t = t - self.warmup_t
        kw = self.kw
        if self.sched == "cosine":
            t_initial, lr_min = kw["t_initial"], kw["lr_min"]
            i = t // t_initial
            t_curr = t - t_initial * i
            lr_max = self.base * kw["cycle_decay"] ** i
            if i < kw["cycle_limit"]:
                return lr_min + 0.5 * (lr_max - lr_min) * (
                    1 + math.cos(math.pi * t_curr / t_initial)
                )
            return lr_min
        if self.sched == "step":
            return self.base * kw["decay_rate"] ** (t // kw["decay_t"])
        return self.base * kw["decay_rate"] ** self.get_curr_decay_steps(t)

    def step(self, epoch):
        if self.t_in_epochs:
            self.opt.lr = self._get_lr(epoch)

    def step_update(self, num_updates):
        if not self.t_in_epochs:
            self.opt.lr = self._get_lr(num_updates)


def timm_train_lrs(base, kwargs, updates_per_epoch, n):
    """The lr of updates 0 … n − 1 in timm's `train.py`: `create_scheduler_v2`'s conversions,
    `step_update(num_updates)` after every update and `step(epoch + 1)` after every epoch."""
    kw = dict(
        sched="cosine",
        num_epochs=300,
        decay_epochs=90,
        decay_milestones=(90, 180, 270),
        decay_rate=0.1,
        min_lr=0.0,
        warmup_lr=1e-5,
        warmup_epochs=0,
        warmup_prefix=False,
        cycle_decay=0.1,
        cycle_limit=1,
        step_on_epochs=True,
    )
    kw.update(kwargs)
    unit = 1 if kw["step_on_epochs"] else updates_per_epoch
    sched = kw["sched"]
    optimizer = Optimizer(base)
    scheduler = TimmScheduler(
        optimizer,
        sched,
        t_in_epochs=kw["step_on_epochs"],
        warmup_t=kw["warmup_epochs"] * unit,
        warmup_lr_init=kw["warmup_lr"],
        warmup_prefix=kw["warmup_prefix"],
        t_initial=kw["num_epochs"] * unit,
        lr_min=kw["min_lr"],
        cycle_decay=kw["cycle_decay"],
        cycle_limit=kw["cycle_limit"],
        decay_rate=kw["decay_rate"],
        decay_t=(
            kw["decay_epochs"] * unit
            if sched == "step"
            else [m * unit for m in kw["decay_milestones"]]
        ),
    )
    lrs, num_updates = [], 0
    for epoch in range(-(-n // updates_per_epoch)):
        for _ in range(updates_per_epoch):
            lrs.append(optimizer.lr)
            num_updates += 1
            scheduler.step_update(num_updates=num_updates)
        scheduler.step(epoch + 1)
    return lrs[:n]


TIMM_CASES = [
    # create_scheduler_v2 kwargs, updates_per_epoch, number of updates
    (dict(sched="cosine", num_epochs=10, min_lr=1e-3, warmup_epochs=3, warmup_lr=1e-5), 1, 14),
    (dict(sched="cosine", num_epochs=6, warmup_epochs=2, warmup_prefix=True), 3, 30),
    (dict(sched="cosine", num_epochs=4, cycle_limit=2, cycle_decay=0.5, warmup_lr=0.0), 2, 20),
    (dict(sched="cosine", num_epochs=5, warmup_epochs=2, step_on_epochs=False), 4, 30),
    (dict(sched="step", decay_epochs=3, decay_rate=0.5, warmup_epochs=2), 2, 24),
    (dict(sched="step", decay_epochs=2.5, decay_rate=0.5, step_on_epochs=False), 2, 20),
    # multistep, per epoch and per update, with and without warmup_prefix, milestones at the
    # boundaries (0 and 1 meet the constructor's value at t = 0; a repeated milestone).
    (dict(sched="multistep", decay_milestones=(2, 5), warmup_epochs=1, warmup_prefix=True), 3, 27),
    (dict(sched="multistep", decay_milestones=(2, 5), warmup_epochs=1), 3, 27),
    (dict(sched="multistep", decay_milestones=(1, 3), step_on_epochs=False), 5, 25),
    (
        dict(sched="multistep", decay_milestones=(1, 4), step_on_epochs=False, warmup_epochs=1),
        4,
        24,
    ),
    (
        dict(sched="multistep", decay_milestones=(0, 3, 3), warmup_epochs=2, warmup_prefix=True),
        2,
        16,
    ),
    (dict(sched="multistep", decay_milestones=(0, 1, 4), decay_rate=0.5), 1, 8),
    (dict(sched="multistep", decay_milestones=(30, 60, 80)), 1, 90),
]


@pytest.mark.parametrize("kwargs, updates_per_epoch, n", TIMM_CASES)
def test_timm_scheduler(kwargs, updates_per_epoch, n):
    base = 0.4
    expected = timm_train_lrs(base, kwargs, updates_per_epoch, n)
    schedule = porting.timm_scheduler(base, updates_per_epoch=updates_per_epoch, **kwargs)
    assert_schedule_equals(schedule, expected)


def test_timm_multistep_decays_one_epoch_before_each_milestone():
    # timm's documented-by-code behaviour, spelled out: ÷10 from epoch 29, 59 and 79.
    schedule = porting.timm_scheduler(
        1.0, sched="multistep", decay_milestones=(30, 60, 80), updates_per_epoch=2
    )
    lrs = [float(schedule(2 * epoch)) for epoch in (28, 29, 58, 59, 78, 79)]
    np.testing.assert_allclose(lrs, [1.0, 0.1, 0.1, 0.01, 0.01, 0.001], rtol=RTOL)


@pytest.mark.parametrize("warmup_prefix", [False, True])
def test_timm_warmup_overrides_or_shifts_the_main_schedule(warmup_prefix):
    base, warmup_t, init = 1.0, 4, 0.1
    main = porting.cosine_annealing_lr(base, T_max=10)
    expected = [
        init + t * (base - init) / warmup_t
        if t < warmup_t
        else closed_cosine(t - warmup_t if warmup_prefix else t, base, 10, 0.0)
        for t in range(12)
    ]
    schedule = porting.timm_warmup(main, base, warmup_t, init, warmup_prefix)
    assert_schedule_equals(schedule, expected)


def test_timm_warmup_of_zero_steps_is_the_main_schedule():
    main = porting.step_lr(1.0, 2, 0.5)
    assert_schedule_equals(porting.timm_warmup(main, 1.0, 0), [1.0, 1.0, 0.5, 0.5])


# ---------------------------------------------------------------------------------------------
# Argument checks: ValueError naming the field and its range.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: porting.linear_lr(0.1, start_factor=0.0),
            "start_factor must be a number in (0, 1]",
        ),
        (lambda: porting.linear_lr(0.1, start_factor=1.5), "start_factor"),
        (lambda: porting.linear_lr(0.1, end_factor=-0.1), "end_factor must be a number in [0, 1]"),
        (lambda: porting.linear_lr(0.1, total_iters=0), "total_iters must be an integer > 0"),
        (lambda: porting.linear_lr(-0.1), "base_lr must be a finite number >= 0"),
        (lambda: porting.constant_lr(0.1, factor=2.0), "factor must be a number in [0, 1]"),
        (lambda: porting.constant_lr(0.1, total_iters=2.5), "total_iters must be an integer > 0"),
        (lambda: porting.step_lr(0.1, step_size=0), "step_size must be an integer > 0"),
        (lambda: porting.multistep_lr(0.1, [3, -1]), "milestones[1] must be an integer >= 0"),
        (lambda: porting.multistep_lr(0.1, [3], gamma=-0.5), "gamma must be a finite number >= 0"),
        (lambda: porting.cosine_annealing_lr(0.1, T_max=0), "T_max must be an integer > 0"),
        (lambda: porting.cosine_annealing_lr(0.1, 5, eta_min=-1.0), "eta_min"),
        (
            lambda: porting.sequential_lr([porting.exponential_lr(0.1, 0.9)] * 2, [1, 2]),
            "milestones must have len(schedules) − 1 = 1 entries",
        ),
        (
            lambda: porting.sequential_lr([porting.exponential_lr(0.1, 0.9)] * 2, [0]),
            "milestones[0] must be an integer > 0",
        ),
        (
            lambda: porting.sequential_lr([porting.exponential_lr(0.1, 0.9)] * 3, [4, 2]),
            "milestones must be non-decreasing",
        ),
        (lambda: porting.sequential_lr([], []), "at least one schedule"),
        (lambda: porting.stepped_per_epoch(lambda t: t, 0), "steps_per_epoch"),
        (
            lambda: porting.timm_warmup(lambda t: t, 0.1, warmup_t=-1),
            "warmup_t must be an integer >= 0",
        ),
        (
            lambda: porting.timm_scheduler(0.1, updates_per_epoch=10, sched="tanh"),
            "sched must be one of 'cosine', 'step', 'multistep'",
        ),
        (lambda: porting.timm_scheduler(0.1, updates_per_epoch=0), "updates_per_epoch"),
        (
            lambda: porting.timm_scheduler(0.1, updates_per_epoch=1, cycle_limit=0),
            "cycle_limit must be an integer > 0",
        ),
        (
            lambda: porting.timm_scheduler(0.1, updates_per_epoch=1, decay_milestones=(5, 2)),
            "decay_milestones must be non-decreasing",
        ),
    ],
)
def test_invalid_arguments_raise_naming_the_field(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


@pytest.mark.parametrize("base, t_max, eta_min", [(3.2, 13260, 0.0), (0.4, 7, 1e-3)])
def test_cosine_annealing_lr_is_accurate_to_float32_over_whole_periods(base, t_max, eta_min):
    # The same accurate form as recipe.cosine_decay: relative 1e-6 at every step, no slack.
    t = np.arange(2 * t_max + 3)
    expected = [closed_cosine(int(s), base, t_max, eta_min) for s in t]
    got = jax.jit(porting.cosine_annealing_lr(base, t_max, eta_min))(jnp.asarray(t, jnp.int32))
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=1e-6, atol=0)
