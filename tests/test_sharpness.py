"""The loss's sharpness (recipe.sharpness): power iteration and Lanczos against exact Hessians
(a quadratic with a known spectrum, a tiny MLP and a tiny BatchNorm model by `jax.hessian`), the
same value under pmap as on one device, and the optimizers' stability thresholds on a 1-D
quadratic."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from recipe import models, sharpness


def _exact_top_eigenvalue(loss_fn, params) -> float:
    """The largest eigenvalue of the Hessian that `jax.hessian` gives."""
    flat, unravel = ravel_pytree(params)
    hessian = jax.jit(jax.hessian(lambda x: loss_fn(unravel(x))))(flat)  # one compile, not ~100
    return float(np.linalg.eigvalsh(np.asarray(hessian, np.float64))[-1])


def test_quadratic_with_known_spectrum():
    spectrum = np.array([4.0, 2.5, 1.0, 0.5, -0.3, 0.1])
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((6, 6)))
    hessian = jnp.asarray(q @ np.diag(spectrum) @ q.T, jnp.float32)
    loss = lambda w: 0.5 * w @ hessian @ w  # noqa: E731
    found = jax.jit(
        functools.partial(sharpness.top_hessian_eigenvalue, loss, iterations=40),
    )(jnp.ones(6), jax.random.key(0))
    assert float(found.eigenvalue) == pytest.approx(4.0, rel=1e-4)
    assert found.estimates.shape == found.residuals.shape == (40,)
    assert float(found.residuals[-1]) < 1e-3 < float(found.residuals[0])
    top_direction = q[:, 0]
    assert abs(float(jnp.dot(found.eigenvector, top_direction))) == pytest.approx(1.0, abs=1e-4)
    # A warm start from the eigenvector is converged from its first iteration.
    again = sharpness.top_hessian_eigenvalue(
        loss, jnp.ones(6), jax.random.key(1), iterations=1, init_vector=found.eigenvector
    )
    assert float(again.eigenvalue) == pytest.approx(4.0, rel=1e-4)


@pytest.mark.parametrize("method, iterations", [("power", 60), ("lanczos", 4)])
def test_a_larger_negative_eigenvalue_is_not_taken_for_the_top(method, iterations):
    spectrum = jnp.array([-5.0, 3.0, 1.0, -1.0])
    loss = lambda w: 0.5 * jnp.sum(spectrum * w**2)  # noqa: E731
    found = sharpness.top_hessian_eigenvalue(
        loss, jnp.ones(4), jax.random.key(2), iterations=iterations, method=method
    )
    assert float(found.eigenvalue) == pytest.approx(3.0, rel=1e-4)
    assert float(found.residuals[-1]) < 1e-3


def _close_spectrum_quadratic(size=200):
    """½ wᵀHw with eigenvalues spread evenly over [1, 2] in a random basis: no gap at the top,
    as in a network's Hessian, where power iteration is slow; (loss, H's top eigenvector)."""
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((size, size)))
    spectrum = np.linspace(1.0, 2.0, size)
    hessian = jnp.asarray(q @ np.diag(spectrum) @ q.T, jnp.float32)
    return (lambda w: 0.5 * w @ hessian @ w), q[:, -1]


def test_lanczos_converges_where_power_iteration_does_not():
    loss, top = _close_spectrum_quadratic()
    key, w = jax.random.key(3), jnp.zeros(200)
    lanczos = jax.jit(
        lambda w: sharpness.top_hessian_eigenvalue(loss, w, key, iterations=40, method="lanczos")
    )(w)
    power = jax.jit(lambda w: sharpness.top_hessian_eigenvalue(loss, w, key, iterations=40))(w)
    assert float(lanczos.eigenvalue) == pytest.approx(2.0, rel=1e-4)
    assert float(lanczos.residuals[-1]) < 0.01 < float(power.residuals[-1])
    assert abs(float(jnp.dot(lanczos.eigenvector, top))) == pytest.approx(1.0, abs=1e-2)
    # The Ritz values of T's leading blocks rise to λ_max (Cauchy interlacing).
    assert np.all(np.diff(np.asarray(lanczos.estimates)) >= -1e-6)
    assert lanczos.estimates.shape == lanczos.residuals.shape == (40,)


def test_lanczos_breakdown_on_fewer_distinct_eigenvalues_than_iterations_is_exact():
    # 3 distinct eigenvalues: the Krylov space is whole after 3 products; the other 7 are 0.
    spectrum = jnp.array([5.0, 2.0, 2.0, 1.0, 1.0, 1.0])
    loss = lambda w: 0.5 * jnp.sum(spectrum * w**2)  # noqa: E731
    found = sharpness.top_hessian_eigenvalue(
        loss, jnp.zeros(6), jax.random.key(4), iterations=10, method="lanczos"
    )
    assert np.all(np.isfinite(np.asarray(found.estimates)))
    np.testing.assert_allclose(np.asarray(found.estimates[2:]), 5.0, rtol=1e-5)
    assert float(found.residuals[-1]) < 1e-5
    assert abs(float(found.eigenvector[0])) == pytest.approx(1.0, abs=1e-5)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method must be one of power, lanczos, got 'qr'"):
        sharpness.top_hessian_eigenvalue(
            jnp.sum, jnp.ones(2), jax.random.key(0), iterations=2, method="qr"
        )


# L(w, s) = ½ wᵀAw + (b·w)³ + s²·(b·w): its Hessian, by hand, is
#   ∂²L/∂w² = A + 6(b·w)·bbᵀ,  ∂²L/∂w∂s = 2s·b,  ∂²L/∂s² = 2(b·w).
HVP_A = np.array([[2.0, -1.0, 0.5], [-1.0, 3.0, 0.0], [0.5, 0.0, 1.0]])
HVP_B = np.array([0.3, -0.7, 1.1])


def _cubic_loss(params, b=HVP_B):
    w, s = params["w"], params["s"]
    return 0.5 * w @ jnp.asarray(HVP_A, jnp.float32) @ w + jnp.dot(b, w) ** 3 + s**2 * jnp.dot(b, w)


def _cubic_hvp_by_hand(w, s, vw, vs, b=HVP_B):
    bw = b @ w
    return {
        "w": HVP_A @ vw + 6 * bw * (b @ vw) * b + 2 * s * vs * b,
        "s": 2 * s * (b @ vw) + 2 * bw * vs,
    }


def test_hessian_vector_product_of_a_hessian_known_by_hand():
    """On a pytree of parameters, where the Hessian depends on them (a quadratic's would not
    show where it is taken)."""
    w, s = np.array([0.4, -1.2, 0.9]), 1.5
    vw, vs = np.array([1.0, 0.5, -2.0]), -0.8
    params = {"w": jnp.asarray(w, jnp.float32), "s": jnp.float32(s)}
    product = jax.jit(lambda v: sharpness.hessian_vector_product(_cubic_loss, params)(v))(
        {"w": jnp.asarray(vw, jnp.float32), "s": jnp.float32(vs)}
    )
    expected = _cubic_hvp_by_hand(w, s, vw, vs)
    for key in ("w", "s"):
        np.testing.assert_allclose(product[key], expected[key], rtol=1e-5, err_msg=key)


def test_hessian_vector_product_across_devices_is_the_mean_of_theirs():
    """Under pmap each device's loss has its own data (here b); the product is the mean of
    the devices' Hessian-vector products, the Hessian of the mean loss."""
    w, s = np.array([0.4, -1.2, 0.9]), 1.5
    vw, vs = np.array([1.0, 0.5, -2.0]), -0.8
    per_device_b = np.array([HVP_B, -2.0 * HVP_B[::-1]])

    def device_product(b):
        params = {"w": jnp.asarray(w, jnp.float32), "s": jnp.float32(s)}
        hvp = sharpness.hessian_vector_product(
            lambda p: _cubic_loss(p, b), params, axis_name="devices"
        )
        return hvp({"w": jnp.asarray(vw, jnp.float32), "s": jnp.float32(vs)})

    products = jax.pmap(device_product, axis_name="devices", devices=jax.devices()[:2])(
        jnp.asarray(per_device_b, jnp.float32)
    )
    by_hand = [_cubic_hvp_by_hand(w, s, vw, vs, b) for b in per_device_b]
    for key in ("w", "s"):
        expected = np.mean([product[key] for product in by_hand], axis=0)
        for device in range(2):
            np.testing.assert_allclose(products[key][device], expected, rtol=1e-5, err_msg=key)


class _MLP(nn.Module):
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Dense(5)(x)
        if self.batch_norm:
            x = models.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(3)(nn.tanh(x))


def _data(examples: int = 16):
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.standard_normal((examples, 4)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, examples))
    return images, labels


def _cross_entropy(labels):
    return lambda logits: optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@pytest.mark.parametrize("method, iterations", [("power", 60), ("lanczos", 20)])
def test_tiny_mlp_matches_jax_hessian(method, iterations):
    images, labels = _data()
    model = _MLP()
    params = model.init(jax.random.key(2), images)["params"]
    loss = sharpness.fixed_batch_loss(model.apply, {}, images, _cross_entropy(labels))
    found = sharpness.top_hessian_eigenvalue(
        loss, params, jax.random.key(3), iterations=iterations, method=method
    )
    exact = _exact_top_eigenvalue(loss, params)
    assert float(found.eigenvalue) == pytest.approx(exact, rel=1e-3)
    if method == "lanczos":  # the trainer's default: its 20 products leave a residual < 1%
        assert float(found.residuals[-1]) < 0.01


@pytest.mark.parametrize("method", sharpness.METHODS)
def test_unrolled_products_give_what_the_loop_gives(method):
    """`unroll=True` (the trainer's probe on CPU) is one program of the same products."""
    images, labels = _data()
    model = _MLP()
    params = model.init(jax.random.key(2), images)["params"]
    loss = sharpness.fixed_batch_loss(model.apply, {}, images, _cross_entropy(labels))
    looped, unrolled = (
        jax.jit(
            functools.partial(
                sharpness.top_hessian_eigenvalue, loss, iterations=4, method=method, unroll=unroll
            )
        )(params, jax.random.key(3))
        for unroll in (1, True)
    )
    np.testing.assert_allclose(unrolled.estimates, looped.estimates, rtol=1e-5)
    np.testing.assert_allclose(unrolled.residuals, looped.residuals, rtol=1e-3, atol=1e-6)


def test_batch_norm_model_sees_the_fixed_batch_statistics():
    images, labels = _data()
    model = _MLP(batch_norm=True)
    variables = model.init(jax.random.key(4), images, train=False)
    # Running averages far from the batch's: used by evaluation mode, never by the measurement.
    stale = jax.tree.map(lambda s: s + 3.0, variables["batch_stats"])
    loss = sharpness.fixed_batch_loss(
        model.apply, stale, images, _cross_entropy(labels), train=True
    )
    found = sharpness.top_hessian_eigenvalue(
        loss, variables["params"], jax.random.key(5), iterations=60
    )
    exact = _exact_top_eigenvalue(loss, variables["params"])
    assert float(found.eigenvalue) == pytest.approx(exact, rel=1e-3)
    fresh = sharpness.fixed_batch_loss(
        model.apply, variables["batch_stats"], images, _cross_entropy(labels), train=True
    )
    assert float(fresh(variables["params"])) == float(loss(variables["params"]))
    with_running_averages = sharpness.fixed_batch_loss(
        model.apply, stale, images, _cross_entropy(labels), train=False
    )
    assert _exact_top_eigenvalue(with_running_averages, variables["params"]) != pytest.approx(
        exact, rel=1e-2
    )


@pytest.mark.parametrize("devices, method", [(2, "power"), (4, "power"), (4, "lanczos")])
def test_pmap_gives_the_global_loss_sharpness(devices, method):
    images, labels = _data()
    model = _MLP()
    params = model.init(jax.random.key(6), images)["params"]
    whole = sharpness.top_hessian_eigenvalue(
        sharpness.fixed_batch_loss(model.apply, {}, images, _cross_entropy(labels)),
        params,
        jax.random.key(7),
        iterations=30,
        method=method,
    )

    def per_device(params, images, labels, key):
        loss = sharpness.fixed_batch_loss(model.apply, {}, images, _cross_entropy(labels))
        return sharpness.top_hessian_eigenvalue(
            loss, params, key, iterations=30, axis_name="batch", method=method
        ).estimates

    shards = lambda x: x.reshape(devices, -1, *x.shape[1:])  # noqa: E731
    replicate = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * devices), tree)  # noqa: E731
    estimates = jax.pmap(per_device, axis_name="batch", devices=jax.devices()[:devices])(
        replicate(params),
        shards(images),
        shards(labels),
        replicate(jax.random.key(7)),
    )
    for device_estimates in np.asarray(estimates):
        np.testing.assert_allclose(device_estimates, whole.estimates, rtol=1e-4)


def _final_distance(learning_rate: float, momentum: float, nesterov: bool) -> float:
    """|w| after 300 steps of optax.sgd on L(w) = ½ w² (λ = 1) from w = 1 (inf if it overflowed)."""
    tx = optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov)

    def step(_, carry):
        w, state = carry
        updates, state = tx.update(w, state)  # the gradient of ½ w² is w
        return optax.apply_updates(w, updates), state

    w = jnp.ones(())
    w, _ = jax.jit(lambda w: jax.lax.fori_loop(0, 300, step, (w, tx.init(w))))(w)
    return float(jnp.abs(w)) if jnp.isfinite(w) else float("inf")


@pytest.mark.parametrize(
    "momentum, nesterov, threshold",
    [(0.0, False, 2.0), (0.9, False, 3.8), (0.9, True, 3.8 / 2.8), (0.5, True, 1.5)],
)
def test_stability_threshold_on_a_quadratic(momentum, nesterov, threshold):
    assert sharpness.stability_threshold(momentum, nesterov) == pytest.approx(threshold)
    # η·λ 2 % under the threshold converges, 2 % over it diverges (λ = 1).
    assert _final_distance(0.98 * threshold, momentum, nesterov) < 1e-3
    assert _final_distance(1.02 * threshold, momentum, nesterov) > 1e3


@pytest.mark.parametrize("momentum", [-0.1, 1.0, float("nan")])
def test_stability_threshold_rejects_bad_momentum(momentum):
    with pytest.raises(ValueError, match="momentum must be in"):
        sharpness.stability_threshold(momentum)


@pytest.mark.parametrize(
    "momentum, nesterov, threshold", [(0.0, False, 2.0), (0.9, False, 3.8), (0.9, True, 3.8 / 2.8)]
)
def test_stability_edge_learning_rate_is_the_threshold_over_the_sharpness(
    momentum, nesterov, threshold
):
    # On ½ λ w² (λ = 4) the edge's rate is the largest stable one: 2 % under it converges.
    rate = sharpness.stability_edge_learning_rate(4.0, momentum, nesterov)
    assert rate == pytest.approx(threshold / 4.0)
    assert _final_distance(0.98 * rate * 4.0, momentum, nesterov) < 1e-3


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_stability_edge_learning_rate_needs_a_positive_sharpness(value):
    with pytest.raises(ValueError, match="sharpness must be a finite number > 0"):
        sharpness.stability_edge_learning_rate(value)


def test_iterations_must_be_positive():
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        sharpness.top_hessian_eigenvalue(jnp.sum, jnp.ones(2), jax.random.key(0), iterations=0)


# ---------------------------------------------------------------------------------------------
# In the trainer: `sharpness.every_steps` logs the curves and does not change training.


def test_trainer_logs_sharpness_and_trains_the_same(finished_run, data_dir, tmp_path):
    import tiny_config
    from conftest import checkpoint_state, expected_scalars, tensorboard_scalars

    from train import loop
    from train.metrics import read_metrics

    uninterrupted, _ = finished_run
    config = tiny_config.make_config(  # with curves.png: its sharpness panel is drawn
        data_dir,
        plot_curves=True,
        # Unrolled, as bench/warmup_reasons.py measures: the products in one program.
        **{"sharpness.every_steps": 4, "sharpness.iterations": 2, "sharpness.unroll": True},
    )
    loop.train_and_evaluate(config, str(tmp_path))
    records = [r for r in read_metrics(tmp_path) if r["kind"] == "sharpness"]
    assert [r["step"] for r in records] == [4, 8, 12]
    for record in records:
        assert record["sharpness"] > 0
        assert record["sharpness_threshold"] == pytest.approx(3.8 / 2.8)
        assert record["lr_times_sharpness"] > 0
    # The learning rate of the next update: the warmup ends at step 4 (one epoch), at kη.
    peak = 0.1 * 1000 / 32
    assert records[0]["lr_times_sharpness"] == pytest.approx(peak * records[0]["sharpness"])
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert (
        scalars["sharpness/lr_times_sharpness"]
        == expected_scalars(records)["sharpness/lr_times_sharpness"]
    )
    assert (tmp_path / "curves.png").stat().st_size > 0
    # An observer: the same loss at every logged step and bitwise the same weights and optimizer
    # state as the run without it (tests/test_observers.py checks the other observers so).
    losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path) if r["kind"] == "train"}
    assert list(losses) == [2, 4, 6, 8, 10, 12]  # every logged step's, to the last
    assert losses == {
        r["step"]: r["loss"] for r in read_metrics(uninterrupted) if r["kind"] == "train"
    }
    measured, plain = checkpoint_state(tmp_path, 12), checkpoint_state(uninterrupted, 12)
    jax.tree.map(np.testing.assert_array_equal, measured, plain)


# The warmup started at the stability edge (optimizer.warmup_start='stability_edge'), under
# shard_map's runner, which the observer tests leave out: the relative update's records too.
EDGE_RUN = {
    "optimizer.warmup_start": "stability_edge",
    "runner": "shard_map",
    "relative_update.enabled": True,
    "num_epochs": 2,  # 8 steps, the warmup the first 4
    "optimizer.decay": "constant",
    "optimizer.decay_epochs": None,
    "bn.precise_batches": 0,
    "log_every_steps": 1,
    "eval_every_epochs": 2,  # one evaluation and one checkpoint, at the end
    "checkpoint_every_steps": 8,
}


def test_warmup_starts_at_the_measured_stability_edge_and_a_resume_reuses_it(
    data_dir, tmp_path, capsys, monkeypatch
):
    import shutil

    import tiny_config
    from conftest import checkpoint_state

    from train import loop, steps, warmup_start
    from train.metrics import read_metrics

    config = tiny_config.make_config(data_dir, **EDGE_RUN)
    measured_dir, stored_dir = tmp_path / "measured", tmp_path / "stored"
    loop.train_and_evaluate(config, str(measured_dir))
    records = read_metrics(measured_dir)
    [record] = [r for r in records if r["kind"] == warmup_start.KIND]
    assert record["step"] == 0 and record["sharpness"] > 0
    assert record["sharpness_residual"] < 0.01  # 20 Lanczos products, the default
    edge = sharpness.stability_edge_learning_rate(record["sharpness"], 0.9, nesterov=True)
    peak = 0.1 * 1000 / 32
    assert record["edge_learning_rate"] == pytest.approx(edge)
    assert record["warmup_init_lr"] == pytest.approx(min(edge, peak))
    assert warmup_start.message(record) in capsys.readouterr().out
    # The first update's rate is the warmup's start; the 4-step warmup then climbs to kη.
    train = [r for r in records if r["kind"] == "train"]
    first, second = train[0]["learning_rate"], train[1]["learning_rate"]
    assert first == pytest.approx(min(edge, peak), rel=1e-6)
    assert second == pytest.approx(first + (peak - first) / 4, rel=1e-6)
    sizes = [r[steps.RELATIVE_UPDATE_MAX] for r in train]
    assert len(sizes) == 8 and all(0 < size < float("inf") for size in sizes)

    # A run that finds λ₀ stored in its work dir, as a resume does, measures nothing and
    # trains as the run that measured it.
    stored_dir.mkdir()
    shutil.copy(measured_dir / warmup_start.START_FILE, stored_dir)
    monkeypatch.setattr(warmup_start, "_measure", lambda *_: pytest.fail("measured again"))
    loop.train_and_evaluate(config, str(stored_dir))
    assert not [r for r in read_metrics(stored_dir) if r["kind"] == warmup_start.KIND]
    jax.tree.map(
        np.testing.assert_array_equal,
        checkpoint_state(stored_dir, 8),
        checkpoint_state(measured_dir, 8),
    )


@pytest.mark.parametrize(
    "unroll, said", [(False, "products in a loop)"), (True, "products unrolled)")]
)
def test_describe_says_whether_the_products_are_unrolled(data_dir, unroll, said):
    import tiny_config

    from train import resolve
    from train import sharpness as probe

    config = tiny_config.make_config(
        data_dir, **{"sharpness.every_steps": 4, "sharpness.unroll": unroll}
    )
    assert said in probe.describe(resolve.resolve(config, jax.device_count()))
