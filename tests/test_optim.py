"""The optimizer: momentum form (Remark 2), coupled L2, accumulation, lr readout."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from recipe import optim

# A diagonal quadratic: L(w) = ½ Σ a·(w − c)², ∇L = a·(w − c).
A = np.array([1.0, 3.0, 0.5], np.float64)
C = np.array([0.5, -1.0, 2.0], np.float64)
W0 = np.array([2.0, 1.0, -1.0], np.float64)


def grad_np(w):
    return A * (w - C)


def grad_jnp(w):
    return jnp.asarray(A, jnp.float32) * (w - jnp.asarray(C, jnp.float32))


def lr_np(t, change_at=3, lr0=0.05, lr1=0.2):
    return lr0 if t < change_at else lr1


def lr_schedule(step):
    return jnp.where(step < 3, 0.05, 0.2)


def goyal_eq(n_steps, corrected):
    """Goyal's v ← m·(η_{t+1}/η_t)·v + η_{t+1}·g, w ← w − v (float64); uncorrected: ratio 1."""
    m, w, v = 0.9, W0.copy(), np.zeros_like(W0)
    prev_lr = lr_np(0)
    for t in range(n_steps):
        lr = lr_np(t)
        ratio = lr / prev_lr if corrected else 1.0
        v = m * ratio * v + lr * grad_np(w)
        w = w - v
        prev_lr = lr
    return w


def run_optax(tx, n_steps):
    w = jnp.asarray(W0, jnp.float32)
    state = tx.init(w)
    for _ in range(n_steps):
        updates, state = tx.update(grad_jnp(w), state, w)
        w = optax.apply_updates(w, updates)
    return np.asarray(w, np.float64)


@pytest.mark.parametrize(
    "make_tx",
    [
        lambda: optax.sgd(lr_schedule, momentum=0.9, nesterov=False),
        lambda: optim.goyal_sgd(lr_schedule, weight_decay=0.0, momentum=0.9, nesterov=False),
    ],
    ids=["optax_sgd", "goyal_sgd"],
)
def test_remark2_optax_momentum_is_goyal_corrected_form(make_tx):
    n = 7  # lr changes 0.05 → 0.2 at step 3
    out = run_optax(make_tx(), n)
    corrected, uncorrected = goyal_eq(n, True), goyal_eq(n, False)
    np.testing.assert_allclose(out, corrected, rtol=1e-5, atol=1e-6)
    # Without the correction the trajectory is measurably different.
    assert np.max(np.abs(uncorrected - corrected)) > 1e-2
    assert np.max(np.abs(out - uncorrected)) > 1e-2


def test_remark2_forms_agree_without_lr_change():
    # Sanity of the reference: with a constant lr both forms coincide (and match optax).
    tx = optax.sgd(0.05, momentum=0.9)
    out = run_optax(tx, 3)
    np.testing.assert_allclose(out, goyal_eq(3, True), rtol=1e-5)
    np.testing.assert_allclose(goyal_eq(3, True), goyal_eq(3, False), rtol=1e-12)


def sched_linear(step):
    return 0.1 * (jnp.asarray(step, jnp.float32) + 1.0)


def test_current_learning_rate_follows_schedule():
    tx = optim.goyal_sgd(sched_linear, weight_decay=0.0, momentum=0.0)
    w = jnp.zeros(2)
    state = tx.init(w)
    assert float(optim.current_learning_rate(state)) == pytest.approx(0.1)  # step-0 rate
    for n in range(1, 5):
        _, state = tx.update(jnp.ones(2), state, w)
        # After the n-th update, the lr used by that update: schedule(n − 1).
        assert float(optim.current_learning_rate(state)) == pytest.approx(0.1 * n, rel=1e-6)


def test_current_learning_rate_under_nnx_optimizer():
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optim.goyal_sgd(sched_linear, momentum=0.9), wrt=nnx.Param)
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    for n in range(1, 4):
        opt.update(model, grads)
        assert float(optim.current_learning_rate(opt.opt_state)) == pytest.approx(0.1 * n)


def test_current_learning_rate_rejects_foreign_state():
    state = optax.sgd(0.1).init(jnp.zeros(2))
    with pytest.raises(ValueError, match="learning_rate"):
        optim.current_learning_rate(state)


@pytest.mark.parametrize("a", [2, 3])
def test_accumulation_lr_changes_every_a_microsteps_and_counts_updates(a):
    warm = 3  # warmup updates
    sched = optax.join_schedules(
        [optax.linear_schedule(0.1, 0.4, warm), optax.constant_schedule(0.4)], [warm]
    )

    def ref(t):  # independent closed form of that schedule
        return 0.1 + 0.3 * t / warm if t < warm else 0.4

    tx = optim.goyal_sgd(sched, weight_decay=0.0, momentum=0.0, accumulation_steps=a)
    w = jnp.zeros(1)
    state = tx.init(w)
    update = jax.jit(tx.update)
    seen, moves = [], []
    for i in range(1, a * (warm + 2) + 1):
        updates, state = update(jnp.ones(1), state, w)
        w_new = optax.apply_updates(w, updates)
        moves.append(float(w[0] - w_new[0]))
        w = w_new
        seen.append(float(optim.current_learning_rate(state)))
        # The lr shown is that of the latest real update, schedule(i // a − 1).
        np.testing.assert_allclose(seen[-1], ref(max(i // a - 1, 0)), rtol=1e-6)
    # The parameters move only on every a-th micro-step, by lr(update index) · g.
    for i, move in enumerate(moves, start=1):
        expected = ref(i // a - 1) if i % a == 0 else 0.0
        np.testing.assert_allclose(move, expected, rtol=1e-5, atol=1e-7)
    # After a·W micro-steps, W real updates have used the whole warmup: the next is at peak.
    assert seen[a * warm - 1] < 0.4
    assert seen[a * warm + a - 1] == pytest.approx(0.4)


def _variables():
    model = nn.Sequential([nn.Dense(3), nn.BatchNorm(use_running_average=True), nn.Dense(2)])
    return model.init(jax.random.key(0), jnp.ones((1, 4)))


@pytest.mark.parametrize("a,spe", [(4, 100), (3, 102), (1, 103)])
def test_build_optimizer_uses_effective_batch(a, spe):
    opt = optim.build_optimizer(
        _variables(),
        batch_size=256,
        steps_per_epoch=spe,
        epochs=10,
        warmup_epochs=2,
        decay_epochs=(5, 8),
        accumulation_steps=a,
    )
    upe = spe // a
    s = opt.schedule
    assert s.peak_lr == pytest.approx(0.1 * 256 * a / 256)
    assert s.steps_per_epoch == upe
    assert s.warmup_steps == 2 * upe
    assert s.total_steps == 10 * upe
    assert s.decay_boundaries == (5 * upe, 8 * upe)
    assert float(s(0)) == pytest.approx(0.1, rel=1e-6)
    assert float(s(2 * upe)) == pytest.approx(0.1 * a, rel=1e-6)


def test_build_optimizer_accumulates_and_masks():
    variables = _variables()
    params = jax.tree.map(lambda w: w + 0.5, variables["params"])
    opt = optim.build_optimizer(
        variables,
        batch_size=256,
        steps_per_epoch=8,
        epochs=2,
        warmup_epochs=1,
        decay="constant",
        accumulation_steps=2,
        weight_decay=0.1,
    )
    assert opt.schedule.peak_lr == pytest.approx(0.2)  # effective batch 512
    state = opt.tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, state = opt.tx.update(zeros, state, params)
    p1 = optax.apply_updates(params, updates)
    jax.tree.map(np.testing.assert_array_equal, p1, params)  # mid micro-step: no move
    updates, state = opt.tx.update(zeros, state, p1)
    p2 = optax.apply_updates(p1, updates)
    # Real update: lr = schedule(0) = 0.1 (base), Nesterov: −η·(1 + m)·λ·w on decayed leaves.
    w = np.asarray(params["layers_0"]["kernel"], np.float64)
    np.testing.assert_allclose(
        np.asarray(p2["layers_0"]["kernel"], np.float64), w - 0.1 * 1.9 * 0.1 * w, rtol=1e-6
    )
    np.testing.assert_array_equal(
        np.asarray(p2["layers_1"]["scale"]), np.asarray(params["layers_1"]["scale"])
    )


def test_build_optimizer_rejects_too_much_accumulation():
    with pytest.raises(ValueError, match="accumulation_steps"):
        optim.build_optimizer(
            _variables(), batch_size=8, steps_per_epoch=3, epochs=1, accumulation_steps=4
        )


@pytest.mark.parametrize("nesterov", [False, True])
def test_multisteps_averages_gradients(nesterov):
    a, lr, wd, m = 3, 0.2, 0.05, 0.9
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(4).astype(np.float32)
    gs = rng.standard_normal((2 * a, 4)).astype(np.float32)

    acc = optim.goyal_sgd(lr, weight_decay=wd, momentum=m, nesterov=nesterov, accumulation_steps=a)
    w = jnp.asarray(w0)
    state = acc.init(w)
    acc_update = jax.jit(acc.update)
    for g in gs:
        updates, state = acc_update(jnp.asarray(g), state, w)
        w = optax.apply_updates(w, updates)

    # Reference: two real steps on the mean gradients, float64, coupled L2 before momentum.
    wr, u = w0.astype(np.float64), np.zeros(4)
    for k in range(2):
        g = gs[k * a : (k + 1) * a].astype(np.float64).mean(0) + wd * wr
        u = m * u + g
        wr = wr - lr * ((g + m * u) if nesterov else u)
    np.testing.assert_allclose(np.asarray(w, np.float64), wr, rtol=1e-5, atol=1e-6)

    # Same as the unaccumulated optimizer fed the mean gradients.
    one = optim.goyal_sgd(lr, weight_decay=wd, momentum=m, nesterov=nesterov)
    w1 = jnp.asarray(w0)
    s1 = one.init(w1)
    for k in range(2):
        updates, s1 = one.update(jnp.asarray(gs[k * a : (k + 1) * a].mean(0)), s1, w1)
        w1 = optax.apply_updates(w1, updates)
    np.testing.assert_allclose(np.asarray(w), np.asarray(w1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(momentum=-0.1), "momentum"),
        (dict(momentum=1.0), "momentum"),
        (dict(momentum=float("nan")), "momentum"),
        (dict(weight_decay=-1e-4), "weight_decay"),
        (dict(weight_decay=float("nan")), "weight_decay"),
        (dict(accumulation_steps=0), "accumulation_steps"),
        (dict(accumulation_steps=-2), "accumulation_steps"),
        (dict(accumulation_steps=1.5), "accumulation_steps"),
    ],
)
def test_bad_arguments_rejected_naming_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field} "):
        optim.goyal_sgd(0.1, **kwargs)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(momentum=1.5), "momentum"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(accumulation_steps=0), "accumulation_steps"),
    ],
)
def test_build_optimizer_bad_arguments_rejected(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field} "):
        optim.build_optimizer(
            _variables(),
            batch_size=8,
            steps_per_epoch=10,
            epochs=1,
            warmup_epochs=0,
            decay="constant",
            **kwargs,
        )


@pytest.mark.parametrize("nesterov", [False, True])
def test_coupled_l2_before_momentum(nesterov):
    lr, wd, m = 0.3, 0.2, 0.9
    w0 = np.array([1.0, -2.0, 0.5], np.float32)
    g1 = np.array([0.3, 0.1, -0.4], np.float32)
    g2 = np.array([-0.2, 0.5, 0.25], np.float32)
    tx = optim.goyal_sgd(lr, weight_decay=wd, momentum=m, nesterov=nesterov)
    w = jnp.asarray(w0)
    state = tx.init(w)
    updates, state = tx.update(jnp.asarray(g1), state, w)
    # First update: −η·(g + λw)·(1 + m) with Nesterov, −η·(g + λw) without.
    d1 = g1.astype(np.float64) + wd * w0.astype(np.float64)
    expected1 = -lr * d1 * ((1.0 + m) if nesterov else 1.0)
    np.testing.assert_allclose(np.asarray(updates, np.float64), expected1, rtol=1e-6)
    # Decoupled decay (−η·λ·w added after momentum) would differ for Nesterov already here.
    if nesterov:
        decoupled = -lr * (1.0 + m) * g1 - lr * wd * w0
        assert np.max(np.abs(expected1 - decoupled)) > 1e-2
    w = optax.apply_updates(w, updates)
    updates, state = tx.update(jnp.asarray(g2), state, w)
    # Second update: the decay term went through the momentum buffer.
    w1 = w0.astype(np.float64) + expected1
    d2 = g2.astype(np.float64) + wd * w1
    u2 = m * d1 + d2
    expected2 = -lr * ((d2 + m * u2) if nesterov else u2)
    np.testing.assert_allclose(np.asarray(updates, np.float64), expected2, rtol=1e-5)
    decoupled2 = -lr * (m * g1 + g2 if not nesterov else g2 + m * (m * g1 + g2)) - lr * wd * w1
    assert np.max(np.abs(expected2 - decoupled2)) > 1e-2


def test_weight_decay_mask_respected():
    tx = optim.goyal_sgd(
        0.1, weight_decay=0.5, weight_decay_mask={"a": True, "b": False}, momentum=0.0
    )
    params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["a"]), -0.05, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(updates["b"]), 0.0)


def test_zero_weight_decay_leaves_no_decay_step():
    params = {"w": jnp.ones(2)}
    tx = optim.goyal_sgd(0.1, weight_decay=0.0, weight_decay_mask={"w": True})
    state = tx.init(params)
    assert len(state) == 1, "the chain should hold the SGD alone"
    updates, _ = tx.update(params, state, params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -0.19, rtol=1e-6)  # −η·(1 + m)·g


@pytest.mark.parametrize("a", [1, 2])
@pytest.mark.parametrize("nesterov", [False, True])
def test_weight_decay_in_loss_gives_the_same_updates(nesterov, a):
    """Decay in the optimizer vs `loss_penalty` added to the loss: the same weights."""
    variables = _variables()
    rng = np.random.default_rng(0)
    targets = jax.tree.map(
        lambda w: jnp.asarray(rng.standard_normal(w.shape), w.dtype), variables["params"]
    )

    def loss(params):  # a quadratic pulling every parameter to its target
        pairs = zip(jax.tree.leaves(params), jax.tree.leaves(targets), strict=True)
        return sum(jnp.sum(jnp.square(p - t)) for p, t in pairs)

    def train(weight_decay, weight_decay_in_loss):
        opt = optim.build_optimizer(
            variables,
            batch_size=256,
            steps_per_epoch=4 * a,
            epochs=2,
            warmup_epochs=1,
            decay_epochs=(1.5,),
            weight_decay=weight_decay,
            nesterov=nesterov,
            accumulation_steps=a,
            weight_decay_in_loss=weight_decay_in_loss,
        )
        assert (opt.loss_penalty is not None) == weight_decay_in_loss

        def objective(params):
            return loss(params) + (opt.loss_penalty(params) if weight_decay_in_loss else 0.0)

        @jax.jit
        def step(params, state):
            updates, state = opt.tx.update(jax.grad(objective)(params), state, params)
            return optax.apply_updates(params, updates), state

        params, state = variables["params"], opt.tx.init(variables["params"])
        for _ in range(8 * a):
            params, state = step(params, state)
        return params, float(optim.current_learning_rate(state))

    in_tx, lr_tx = train(0.05, weight_decay_in_loss=False)
    in_loss, lr_loss = train(0.05, weight_decay_in_loss=True)
    undecayed, _ = train(0.0, weight_decay_in_loss=False)
    assert lr_tx == lr_loss
    chex.assert_trees_all_close(in_loss, in_tx, rtol=1e-6, atol=1e-7)
    # The decay acted on the Dense kernels and left BN's γ/β alone.
    assert np.max(np.abs(in_loss["layers_0"]["kernel"] - undecayed["layers_0"]["kernel"])) > 1e-3
    chex.assert_trees_all_close(in_loss["layers_1"], undecayed["layers_1"], rtol=1e-6)


def test_build_optimizer_refuses_epochs_of_partial_updates():
    # 103 micro-batches are 25.75 updates of 4: the schedule's epochs would drift from the data's.
    with pytest.raises(ValueError, match=r"steps_per_epoch \(103\) must be a multiple of accum"):
        optim.build_optimizer(
            _variables(), batch_size=256, steps_per_epoch=103, epochs=10, accumulation_steps=4
        )


@pytest.mark.parametrize(
    "learning_rate, message",
    [
        (-0.1, r"learning_rate must be a finite number > 0, got -0\.1"),
        (0.0, r"learning_rate must be a finite number > 0, got 0\.0"),
        (float("nan"), r"learning_rate must be a finite number > 0, got nan"),
        (float("inf"), r"learning_rate must be a finite number > 0, got inf"),
        (jnp.array(-1.0), r"learning_rate must be a finite number > 0, got -1\.0"),
        (optax.constant_schedule(-0.5), r"schedule with a finite value > 0 at step 0, got -0\.5"),
        (optax.constant_schedule(float("nan")), r"schedule with a finite value > 0 .* got nan"),
    ],
)
def test_goyal_sgd_refuses_bad_learning_rates(learning_rate, message):
    with pytest.raises(ValueError, match=message):
        optim.goyal_sgd(learning_rate)


@pytest.mark.parametrize("learning_rate", [0.1, np.float32(0.1), jnp.array(0.1)])
def test_goyal_sgd_takes_scalar_learning_rates(learning_rate):
    state = optim.goyal_sgd(learning_rate).init({"w": jnp.ones(2)})
    assert float(optim.current_learning_rate(state)) == pytest.approx(0.1)


def test_relative_update_size_of_an_sgd_step_per_top_level_group():
    params = {
        "conv": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)},
        "bn": {"scale": jnp.zeros(3), "bias": jnp.zeros(3)},  # zero-γ and β: ‖w‖ = 0
        "head": {"kernel": jnp.ones((3, 2))},
    }
    grads = {
        "conv": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)},
        "bn": {"scale": jnp.ones(3), "bias": jnp.zeros(3)},
        "head": {"kernel": jnp.zeros((3, 2))},
    }
    updates, _ = optax.sgd(0.1).update(grads, optax.sgd(0.1).init(params), params)
    sizes = jax.jit(optim.relative_update_size)(updates, params)
    assert set(sizes) == {"conv", "bn", "head"}
    conv_norm = np.sqrt(np.sum(np.arange(6.0) ** 2) + 3.0)  # the kernel and the bias together
    np.testing.assert_allclose(sizes["conv"], 0.1 * np.sqrt(6.0) / conv_norm, rtol=1e-6)
    assert float(sizes["bn"]) == np.inf  # moved from all-zero weights
    assert float(sizes["head"]) == 0.0
