"""Learning-rate schedules against closed forms written independently in plain Python."""

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recipe import schedules

# ---------------------------------------------------------------------------------------------
# Independent references (plain Python floats, float64).
# ---------------------------------------------------------------------------------------------


def ref_step_decay(t, init, boundaries, factor):
    return init * factor ** sum(1 for b in boundaries if t >= b)


def ref_cosine(t, init, steps, final=0.0):
    t = min(t, steps)
    return final + (init - final) * 0.5 * (1.0 + math.cos(math.pi * t / steps))


def ref_poly(t, init, steps, final=0.0, power=1.0):
    t = min(t, steps)
    return final + (init - final) * (1.0 - t / steps) ** power


def ref_gradual(t, init, peak, warmup, after):
    if t < warmup:
        return init + (peak - init) * t / warmup
    return after(t - warmup)


def ref_constant_warmup(t, init, warmup, after):
    return init if t < warmup else after(t - warmup)


class NoteGradualWarmupScheduler:
    """The study note's `GradualWarmupScheduler.get_lr`, transliterated (no torch)."""

    def __init__(self, base_lrs, multiplier, total_epoch, after_scheduler=None):
        if multiplier < 1.0:
            raise ValueError("multiplier should be greater thant or equal to 1.")
        self.base_lrs = list(base_lrs)
        self.multiplier = multiplier
        self.total_epoch = total_epoch
        self.after_scheduler = after_scheduler
        self.finished = False
        self.last_epoch = 0

    def get_lr(self):
        if self.last_epoch > self.total_epoch:
            if self.after_scheduler:
                raise NotImplementedError  # not transliterated: it depends on torch state
            return [base_lr * self.multiplier for base_lr in self.base_lrs]
        return [
            base_lr * ((self.multiplier - 1.0) * self.last_epoch / self.total_epoch + 1.0)
            for base_lr in self.base_lrs
        ]


def _call(schedule, step, *, jit, as_array):
    fn = jax.jit(schedule) if jit else schedule
    return fn(jnp.asarray(step, jnp.int32) if as_array else step)


def _check(schedule, ref, steps, *, jit, as_array, rtol=1e-6, atol=1e-7):
    for t in steps:
        out = _call(schedule, t, jit=jit, as_array=as_array)
        chex.assert_shape(out, ())
        chex.assert_type(out, jnp.float32)
        np.testing.assert_allclose(np.float64(out), ref(t), rtol=rtol, atol=atol, err_msg=f"t={t}")


CALL_MODES = pytest.mark.parametrize(
    "jit,as_array", [(False, False), (False, True), (True, False), (True, True)]
)

# ---------------------------------------------------------------------------------------------
# Linear scaling rule.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch,expected", [(256, 0.1), (512, 0.2), (1024, 0.4), (8192, 3.2), (128, 0.05)]
)
def test_scaled_learning_rate(batch, expected):
    assert schedules.scaled_learning_rate(0.1, batch) == pytest.approx(expected, rel=1e-12)


def test_scaled_learning_rate_custom_base():
    assert schedules.scaled_learning_rate(0.2, 1024, base_batch_size=512) == pytest.approx(0.4)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=-256), "batch_size"),
        (dict(batch_size=256, base_batch_size=0), "base_batch_size"),
        (dict(batch_size=256, base_batch_size=-1), "base_batch_size"),
    ],
)
def test_scaled_learning_rate_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field} "):
        schedules.scaled_learning_rate(0.1, **kwargs)


def test_scaled_learning_rate_rejects_bad_base_lr():
    with pytest.raises(ValueError, match="base_lr"):
        schedules.scaled_learning_rate(0.0, 256)


# ---------------------------------------------------------------------------------------------
# Building blocks.
# ---------------------------------------------------------------------------------------------


@CALL_MODES
def test_step_decay(jit, as_array):
    bounds = [10, 20, 35]
    sched = schedules.step_decay(3.2, bounds, 0.1)
    steps = [0, 1, 9, 10, 11, 19, 20, 21, 34, 35, 36, 50]
    _check(sched, lambda t: ref_step_decay(t, 3.2, bounds, 0.1), steps, jit=jit, as_array=as_array)


@pytest.mark.parametrize("bounds", [[20, 10], [10, 10], [-1, 5]])
def test_step_decay_rejects_bad_boundaries(bounds):
    with pytest.raises(ValueError, match="boundaries"):
        schedules.step_decay(1.0, bounds)


@CALL_MODES
@pytest.mark.parametrize("final", [0.0, 0.01])
def test_cosine_decay(jit, as_array, final):
    sched = schedules.cosine_decay(2.0, 40, final)
    steps = [0, 1, 10, 20, 39, 40, 41, 100]
    _check(sched, lambda t: ref_cosine(t, 2.0, 40, final), steps, jit=jit, as_array=as_array)


@CALL_MODES
@pytest.mark.parametrize("power", [1.0, 2.0])
def test_polynomial_decay(jit, as_array, power):
    sched = schedules.polynomial_decay(1.5, 30, 0.05, power)
    steps = [0, 1, 15, 29, 30, 31, 90]
    _check(sched, lambda t: ref_poly(t, 1.5, 30, 0.05, power), steps, jit=jit, as_array=as_array)


@CALL_MODES
def test_gradual_warmup_then_step_decay(jit, as_array):
    warmup, bounds = 8, [12, 20]
    sched = schedules.gradual_warmup(0.1, 0.8, warmup, schedules.step_decay(0.8, bounds, 0.1))

    def ref(t):
        return ref_gradual(t, 0.1, 0.8, warmup, lambda s: ref_step_decay(s, 0.8, bounds, 0.1))

    # 0, 1, W-1, W, W+1, each decay boundary (absolute W+b) +-1, and well after.
    steps = [0, 1, 7, 8, 9, 19, 20, 21, 27, 28, 29, 40]
    _check(sched, ref, steps, jit=jit, as_array=as_array)


@pytest.mark.parametrize("init,peak", [(0.1, 3.2), (1e-3, 10.0), (1e-4, 1.0)])
def test_gradual_warmup_starts_at_init_value_not_zero(init, peak):
    sched = schedules.gradual_warmup(init, peak, 10, schedules.constant(peak))
    # Exactly η in float32 (no (η − kη) + kη cancellation), under jit or not.
    assert float(sched(0)) == float(np.float32(init))
    assert float(jax.jit(sched)(jnp.int32(0))) == float(np.float32(init))
    # The first step adds (kη − η)/W.
    assert float(sched(1)) - float(sched(0)) == pytest.approx((peak - init) / 10, rel=1e-5)


def test_gradual_warmup_zero_steps_is_after():
    after = schedules.cosine_decay(1.0, 10)
    sched = schedules.gradual_warmup(0.1, 1.0, 0, after)
    for t in (0, 3, 10):
        assert float(sched(t)) == pytest.approx(ref_cosine(t, 1.0, 10), abs=1e-7)


@CALL_MODES
def test_constant_warmup(jit, as_array):
    sched = schedules.constant_warmup(0.1, 5, schedules.constant(3.2))
    steps = [0, 1, 4, 5, 6, 30]
    _check(
        sched,
        lambda t: ref_constant_warmup(t, 0.1, 5, lambda s: 3.2),
        steps,
        jit=jit,
        as_array=as_array,
    )


def test_schedule_accepts_int_vector_steps():
    sched = schedules.gradual_warmup(0.1, 0.8, 8, schedules.step_decay(0.8, [12], 0.1))
    steps = np.array([0, 1, 7, 8, 9, 19, 20, 21], np.int32)
    out = jax.jit(sched)(jnp.asarray(steps))
    chex.assert_shape(out, (8,))
    chex.assert_type(out, jnp.float32)
    expected = [
        ref_gradual(int(t), 0.1, 0.8, 8, lambda s: ref_step_decay(s, 0.8, [12], 0.1)) for t in steps
    ]
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# The note's GradualWarmupScheduler semantics.
# ---------------------------------------------------------------------------------------------


@CALL_MODES
@pytest.mark.parametrize("multiplier", [1.0, 2.5, 8.0])
def test_warmup_multiplier_matches_note_get_lr(jit, as_array, multiplier):
    base, total = 0.1, 6
    note = NoteGradualWarmupScheduler([base], multiplier, total)

    def ref(t):
        note.last_epoch = t
        return note.get_lr()[0]

    sched = schedules.warmup_multiplier_schedule(base, multiplier, total)
    _check(sched, ref, [0, 1, 2, 5, 6, 7, 20], jit=jit, as_array=as_array)


def test_warmup_multiplier_one_is_flat():
    sched = schedules.warmup_multiplier_schedule(0.3, 1.0, 10)
    out = np.asarray(sched(jnp.arange(0, 25, dtype=jnp.int32)), np.float64)
    np.testing.assert_allclose(out, 0.3, rtol=1e-6)


@pytest.mark.parametrize("multiplier", [0.5, 0.999, float("nan")])
def test_warmup_multiplier_below_one_rejected(multiplier):
    with pytest.raises(ValueError, match="multiplier"):
        schedules.warmup_multiplier_schedule(0.1, multiplier, 5)
    if multiplier < 1.0:  # the note's original rejects m < 1 too (but lets NaN through)
        with pytest.raises(ValueError):
            NoteGradualWarmupScheduler([0.1], multiplier, 5)


def test_warmup_multiplier_rejects_zero_warmup():
    with pytest.raises(ValueError, match="warmup_steps"):
        schedules.warmup_multiplier_schedule(0.1, 2.0, 0)


@CALL_MODES
def test_warmup_multiplier_after_schedule_is_built_from_peak(jit, as_array):
    base, m, total, decay_steps = 0.1, 8.0, 5, 100
    sched = schedules.warmup_multiplier_schedule(
        base, m, total, after=lambda peak: schedules.cosine_decay(peak, decay_steps)
    )

    def ref(t):
        if t <= total:
            return base * ((m - 1.0) * t / total + 1.0)
        return ref_cosine(t - total, m * base, decay_steps)

    _check(sched, ref, [0, 1, 4, 5, 6, 7, 55, 104, 105, 106, 200], jit=jit, as_array=as_array)
    # Right after T the lr is still near m·base: the PyTorch bug decayed from base (0.1).
    assert float(sched(total + 1)) > 0.99 * m * base


def test_warmup_multiplier_boundary_convention_documented():
    doc = schedules.warmup_multiplier_schedule.__doc__
    assert "Boundary convention" in doc
    assert "m · base" in doc and "step 0 at t = T" in doc
    # And the code follows it: at T, the lr is m·base; after(peak)(0) is used at T.
    base, m, total = 0.2, 4.0, 10
    seen = []

    def after(peak):
        seen.append(peak)
        return schedules.constant(123.0)  # visible if it is used from step T on

    sched = schedules.warmup_multiplier_schedule(base, m, total, after=after)
    assert seen == [pytest.approx(m * base)]
    assert float(sched(total - 1)) == pytest.approx(base * ((m - 1) * 9 / 10 + 1), rel=1e-6)
    assert float(sched(total)) == pytest.approx(123.0)


# ---------------------------------------------------------------------------------------------
# goyal_schedule: Table 1 of the paper.
# ---------------------------------------------------------------------------------------------

SPE = 1281167 // 8192  # 156 updates per epoch at kn = 8192
TOTAL = 90 * SPE  # 14040
WARM = 5 * SPE  # 780
BOUNDS = [30 * SPE, 60 * SPE, 80 * SPE]  # 4680, 9360, 12480


def _table1(**kwargs):
    return schedules.goyal_schedule(batch_size=8192, steps_per_epoch=SPE, epochs=90, **kwargs)


def test_table1_resolved_numbers():
    assert SPE == 156 and WARM == 780 and BOUNDS == [4680, 9360, 12480]
    s = _table1()
    assert s.peak_lr == pytest.approx(3.2)
    assert s.base_lr == pytest.approx(0.1)
    assert s.warmup_lr == pytest.approx(0.1)
    assert s.warmup_steps == 780
    assert s.decay_boundaries == (4680, 9360, 12480)
    assert s.total_steps == 14040
    assert s.steps_per_epoch == 156


@CALL_MODES
def test_table1_gradual_warmup_step_decay(jit, as_array):
    s = _table1()

    def ref(t):
        if t < WARM:
            return 0.1 + (3.2 - 0.1) * t / WARM
        return 3.2 * 0.1 ** sum(1 for b in BOUNDS if t >= b)

    steps = [0, 1, WARM - 1, WARM, WARM + 1]
    steps += [b + d for b in BOUNDS for d in (-1, 0, 1)]
    steps += [TOTAL - 1]
    _check(s, ref, steps, jit=jit, as_array=as_array)
    assert float(s(0)) == float(np.float32(0.1))
    assert float(s(780)) == float(np.float32(3.2))
    assert float(s(TOTAL - 1)) == pytest.approx(0.0032, rel=1e-5)


def test_table1_warmup_is_linear_per_step():
    s = _table1()
    lrs = np.asarray(jax.jit(s)(jnp.arange(0, WARM + 1, dtype=jnp.int32)), np.float64)
    np.testing.assert_allclose(np.diff(lrs), (3.2 - 0.1) / 780, rtol=2e-3)
    np.testing.assert_allclose(lrs, 0.1 + np.arange(WARM + 1) * (3.1 / 780), rtol=1e-5)


@CALL_MODES
def test_table1_constant_warmup(jit, as_array):
    s = _table1(warmup="constant")

    def ref(t):
        if t < WARM:
            return 0.1
        return 3.2 * 0.1 ** sum(1 for b in BOUNDS if t >= b)

    steps = [0, 1, WARM - 1, WARM, WARM + 1, BOUNDS[0] - 1, BOUNDS[0], TOTAL - 1]
    _check(s, ref, steps, jit=jit, as_array=as_array)


@pytest.mark.parametrize("warmup", ["gradual", "constant"])
def test_small_batch_warmup_stays_at_k_eta(warmup):
    # k = 0.5 < 1: nothing to warm up to; the warmup holds kη instead of ramping down from η.
    s = schedules.goyal_schedule(
        batch_size=128, steps_per_epoch=10, epochs=10, warmup=warmup, decay_epochs=(6, 8)
    )
    assert s.peak_lr == pytest.approx(0.05) and s.warmup_lr == pytest.approx(0.05)
    _check(
        s,
        lambda t: ref_step_decay(t, 0.05, [60, 80], 0.1),
        [0, 1, 49, 50, 51, 59, 60, 99],
        jit=True,
        as_array=True,
    )


def test_table1_no_warmup():
    s = _table1(warmup="none")
    assert s.warmup_steps == 0

    def ref(t):
        return 3.2 * 0.1 ** sum(1 for b in BOUNDS if t >= b)

    _check(s, ref, [0, 1, WARM, BOUNDS[0] - 1, BOUNDS[0], TOTAL - 1], jit=True, as_array=True)


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_table1_smooth_decays(decay):
    s = _table1(decay=decay)
    n = TOTAL - WARM

    def ref(t):
        if t < WARM:
            return 0.1 + 3.1 * t / WARM
        return ref_cosine(t - WARM, 3.2, n) if decay == "cosine" else ref_poly(t - WARM, 3.2, n)

    steps = [0, 1, WARM - 1, WARM, WARM + 1, 5000, TOTAL - 1, TOTAL]
    _check(s, ref, steps, jit=True, as_array=True, rtol=1e-5, atol=1e-6)
    assert float(s(TOTAL)) == pytest.approx(0.0, abs=1e-6)
    assert float(s(TOTAL - 1)) < 3e-4


def test_constant_decay():
    s = _table1(decay="constant")
    _check(s, lambda t: 3.2, [WARM, WARM + 1, TOTAL - 1], jit=False, as_array=False)


@pytest.mark.parametrize(
    "epochs, steps_per_epoch, steps",
    # The default run's step decay (docs/trainer.md's --describe): Goyal's epochs 30, 60 and 80
    # of 90 placed on 15 epochs of 31 updates, at updates 181, 323 and 418.
    [(5.824, 31, 181), (10.41, 31, 323), (13.47, 31, 418), (0, 7, 0), (2.9, 1, 3), (0.2, 1, 0)],
)
def test_epochs_to_steps_rounds_to_the_nearest_update(epochs, steps_per_epoch, steps):
    assert schedules.epochs_to_steps(epochs, steps_per_epoch) == steps


def test_epochs_to_steps_names_what_it_refuses():
    with pytest.raises(ValueError, match=r"^warmup_epochs must be a finite number >= 0, got -1"):
        schedules.epochs_to_steps(-1, 10, name="warmup_epochs")
    with pytest.raises(ValueError, match=r"^steps_per_epoch must be an integer > 0, got 0"):
        schedules.epochs_to_steps(1, 0)


def test_goyal_fractional_warmup_epochs_round_to_steps():
    s = schedules.goyal_schedule(
        batch_size=512, steps_per_epoch=10, epochs=4, warmup_epochs=0.25, decay_epochs=(2, 3)
    )
    assert s.warmup_steps == round(0.25 * 10)
    assert s.decay_boundaries == (20, 30)
    assert float(s(0)) == pytest.approx(0.1, rel=1e-6)


def test_warmup_longer_than_training_rejected():
    with pytest.raises(ValueError, match="warmup_epochs"):
        schedules.goyal_schedule(
            batch_size=8192, steps_per_epoch=156, epochs=4, warmup_epochs=5, decay="cosine"
        )


@pytest.mark.parametrize(
    "kwargs,field,allowed",
    [
        (dict(warmup="linear"), "warmup", schedules.WARMUP_KINDS),
        (dict(decay="exponential"), "decay", schedules.DECAY_KINDS),
    ],
)
def test_bad_kind_rejected_listing_allowed(kwargs, field, allowed):
    with pytest.raises(ValueError, match=rf"^{field} ") as info:
        _table1(**kwargs)
    for name in allowed:
        assert repr(name) in str(info.value)
    assert set(schedules.WARMUP_KINDS) == {"gradual", "constant", "none"}
    assert set(schedules.DECAY_KINDS) == {"step", "cosine", "linear", "poly", "constant"}


@pytest.mark.parametrize("decay_epochs", [(3, 60, 80), (30, 60, 95)])
def test_decay_epoch_outside_training_rejected(decay_epochs):
    with pytest.raises(ValueError, match=re.escape("decay_epochs")):
        _table1(decay_epochs=decay_epochs)


@pytest.mark.parametrize("factor", [0.0, -0.1, 1.5, 2.0, float("nan")])
def test_decay_factor_outside_zero_one_is_refused(factor):
    with pytest.raises(ValueError, match=r"^factor must be a number in \(0, 1\]"):
        schedules.step_decay(1.0, [10], factor)
    with pytest.raises(ValueError, match=r"^decay_factor must be a number in \(0, 1\]"):
        _table1(decay_factor=factor)


@pytest.mark.parametrize(
    "epochs, warmup, expected",
    [
        (90, 5, (30, 60, 80)),  # the paper
        (90, 0, (30, 60, 80)),  # the no-warmup baseline keeps the paper's milestones
        (45, 0, (15, 30, 40)),  # shares of the run
        (18, 1, (6, 12, 16)),  # warmup within the paper's share (5/90 of 18 = 1)
        # A longer warmup than the paper's share: shares of the epochs after it.
        (15, 2, (2 + 13 * 25 / 85, 2 + 13 * 55 / 85, 2 + 13 * 75 / 85)),
        (5, 2, (2 + 3 * 25 / 85, 2 + 3 * 55 / 85, 2 + 3 * 75 / 85)),
    ],
)
def test_paper_decay_epochs(epochs, warmup, expected):
    np.testing.assert_allclose(schedules.paper_decay_epochs(epochs, warmup), expected, rtol=1e-12)


@pytest.mark.parametrize("epochs, warmup", [(5, 2.0), (7, 2.0), (15, 2.0), (90, 5.0), (3, 0.5)])
def test_default_decay_follows_the_run_length(epochs, warmup):
    s = schedules.goyal_schedule(
        batch_size=1024, steps_per_epoch=31, epochs=epochs, warmup_epochs=warmup
    )
    assert s.decay_epochs == schedules.paper_decay_epochs(epochs, warmup)
    assert s.warmup_steps < s.decay_boundaries[0] < s.decay_boundaries[-1] < s.total_steps


@pytest.mark.parametrize(
    "decay_epochs",
    [(5, 60, 80), (4, 60, 80), (30, 60, 90), (60, 30, 80), (30, 30, 80), (), (30, float("nan"))],
)
def test_decay_epochs_must_follow_warmup_and_end_before_the_run(decay_epochs):
    with pytest.raises(ValueError, match=r"^decay_epochs must"):
        _table1(decay_epochs=decay_epochs)


def test_decay_epochs_on_the_same_update_are_refused():
    with pytest.raises(ValueError, match=r"fall on updates \[2, 2\]"):
        schedules.goyal_schedule(
            batch_size=256, steps_per_epoch=2, epochs=4, warmup="none", decay_epochs=(1.0, 1.1)
        )


# (init, final, decay steps): Goyal's 90-epoch cosine at kn = 8k (13,260 updates after the
# warmup), a floor, a short decay, and an odd length (the sin²/cos² switch off the grid).
ACCURACY_CASES = [(3.2, 0.0, 13260), (0.4, 1e-3, 1000), (1.0, 0.0, 7), (0.1, 0.0, 2001)]


@pytest.mark.parametrize("init, final, decay_steps", ACCURACY_CASES)
def test_cosine_decay_is_accurate_to_float32_over_the_whole_curve(init, final, decay_steps):
    # Relative 1e-6 at every step, the tail included (no absolute slack), against float64.
    t = np.arange(decay_steps + 3)
    done = np.minimum(t, decay_steps).astype(np.float64)
    expected = final + (init - final) * 0.5 * (1.0 + np.cos(np.pi * done / decay_steps))
    got = jax.jit(schedules.cosine_decay(init, decay_steps, final))(jnp.asarray(t, jnp.int32))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=1e-6, atol=0)
