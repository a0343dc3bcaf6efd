"""Mixup / CutMix: targets, smoothing applied once, the box area, determinism, switches.

λ is read back from the mixed images, independently of the targets: the test images are built
so that every pixel differs from its partner's (x − flip(x) ≠ 0), so Mixup's λ is
(x̃ − x') / (x − x') and CutMix's box is where x̃ = x' ≠ x.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recipe import losses, mixing

B, H, W, C, K = 6, 7, 5, 2, 10
LABELS = jnp.array([0, 3, 3, 7, 1, 9], jnp.int32)  # y_i ≠ y_{B−1−i} for every i


def distinct_images():
    """x[i] ≠ x[B−1−i] at every pixel."""
    base = jnp.arange(H * W * C, dtype=jnp.float32).reshape(H, W, C) / (H * W * C)
    return jnp.stack([base + 2.0 * i for i in range(B)])


def closed_form_targets(lam, eps):
    """(1 − ε)(λ e_y + (1 − λ) e_y') + ε/K, float64, λ per example or per batch."""
    lam = np.broadcast_to(np.asarray(lam, np.float64), (B,))[:, None]
    one_hot = np.eye(K)[np.asarray(LABELS)]
    return (1 - eps) * (lam * one_hot + (1 - lam) * one_hot[::-1]) + eps / K


def mixup_lambda(images, mixed):
    images, mixed = np.asarray(images, np.float64), np.asarray(mixed, np.float64)
    partner = images[::-1]
    lam = (mixed - partner) / (images - partner)
    np.testing.assert_allclose(lam, lam.flat[0], rtol=0, atol=1e-4)  # one λ for the batch
    return float(lam.flat[0])


def cutmix_box(images, mixed):
    """The pasted box (bool [H, W]); checks it is one rectangle, the same in every image."""
    pasted = np.asarray(mixed) == np.asarray(images)[::-1]
    box = pasted[0, :, :, 0]
    assert np.all(pasted == box[None, :, :, None])
    if box.any():
        rows, cols = np.nonzero(box.any(1))[0], np.nonzero(box.any(0))[0]
        expected = np.zeros_like(box)
        expected[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        np.testing.assert_array_equal(box, expected)
    return box


MIX = functools.partial(mixing.mixup_cutmix, num_classes=K)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("seed", range(4))
def test_mixup_targets_are_the_closed_form_with_smoothing_once(seed, eps):
    images = distinct_images()
    mixed, targets = MIX(jax.random.key(seed), images, LABELS, mixup_alpha=0.4, label_smoothing=eps)
    lam = mixup_lambda(images, mixed)
    assert 0.0 < lam < 1.0
    np.testing.assert_allclose(targets, closed_form_targets(lam, eps), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(targets).sum(-1), 1.0, rtol=1e-6)
    if eps:  # smoothing twice would put (1 − ε)² on the labels and (2 − ε)ε/K off them
        twice = (1 - eps) * closed_form_targets(lam, 0.0) + eps / K
        assert np.abs(np.asarray(targets) - (1 - eps) * twice - eps / K).max() > 1e-3


def test_cutmix_box_area_matches_lambda_after_clipping():
    eps = 0.1
    images = distinct_images()
    keys = jax.random.split(jax.random.key(7), 64)
    run = jax.jit(jax.vmap(lambda k: MIX(k, images, LABELS, cutmix_alpha=1.0, label_smoothing=eps)))
    mixed_all, targets_all = jax.device_get(run(keys))
    clipped = 0
    for mixed, targets in zip(mixed_all, targets_all, strict=True):
        box = cutmix_box(images, mixed)
        lam = 1.0 - box.sum() / (H * W)
        np.testing.assert_allclose(targets, closed_form_targets(lam, eps), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(targets).sum(-1), 1.0, rtol=1e-6)
        rows, cols = box.any(1), box.any(0)
        clipped += bool(rows[0] or rows[-1] or cols[0] or cols[-1])
    assert clipped > 5  # boxes cut by the border occurred, and λ followed their real area


def test_batch_is_unchanged_when_disabled_or_not_drawn():
    images = distinct_images()
    one_hot_smoothed = closed_form_targets(1.0, 0.1)
    for kwargs in ({"enabled": False}, {"enabled": jnp.asarray(False)}, {"prob": 0.0}):
        mixed, targets = jax.jit(
            lambda k, kw=kwargs: MIX(k, images, LABELS, mixup_alpha=1.0, label_smoothing=0.1, **kw)
        )(jax.random.key(0))
        np.testing.assert_array_equal(mixed, images)
        np.testing.assert_allclose(targets, one_hot_smoothed, rtol=1e-6)


@pytest.mark.parametrize("switch_prob, cutmix", [(0.0, False), (1.0, True)])
def test_switch_prob_chooses_between_mixup_and_cutmix(switch_prob, cutmix):
    images = distinct_images()
    for seed in range(3):
        mixed, _ = MIX(
            jax.random.key(seed),
            images,
            LABELS,
            mixup_alpha=1.0,
            cutmix_alpha=1.0,
            switch_prob=switch_prob,
        )
        pasted = np.asarray(mixed) == np.asarray(images)[::-1]
        untouched = np.asarray(mixed) == np.asarray(images)
        # CutMix leaves every pixel either its own or its partner's; Mixup leaves neither.
        assert np.all(pasted | untouched) == cutmix


def test_deterministic_from_seed_and_step_and_per_device_keys_differ():
    images, kwargs = distinct_images(), {"mixup_alpha": 0.2, "cutmix_alpha": 1.0}
    first = MIX(mixing.mixing_key(3, 11), images, LABELS, **kwargs)
    again = MIX(mixing.mixing_key(3, 11), images, LABELS, **kwargs)
    later = MIX(mixing.mixing_key(3, 12), images, LABELS, **kwargs)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], later[1])

    devices = jax.devices()[:4]

    def keys(step, axis_name):
        return jax.random.key_data(mixing.mixing_key(3, step, axis_name))

    per_device = jax.pmap(lambda s: keys(s, "d"), axis_name="d", devices=devices)(jnp.full(4, 11))
    per_batch = jax.pmap(lambda s: keys(s, None), axis_name="d", devices=devices)(jnp.full(4, 11))
    assert len({tuple(np.asarray(k).tolist()) for k in per_device}) == 4
    assert len({tuple(np.asarray(k).tolist()) for k in per_batch}) == 1
    np.testing.assert_array_equal(per_batch[0], jax.random.key_data(mixing.mixing_key(3, 11)))


def test_the_loss_takes_the_soft_targets_with_no_second_smoothing():
    images = distinct_images()
    _, targets = MIX(jax.random.key(1), images, LABELS, mixup_alpha=1.0, label_smoothing=0.1)
    logits = jax.random.normal(jax.random.key(2), (B, K))
    logp = np.asarray(jax.nn.log_softmax(logits), np.float64)
    expected = float(np.mean(-(np.asarray(targets, np.float64) * logp).sum(-1)))
    np.testing.assert_allclose(float(losses.cross_entropy(logits, targets)), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "mixup_alpha or cutmix_alpha must be > 0"),
        ({"mixup_alpha": -1.0}, "mixup_alpha must be a finite number >= 0, got -1.0"),
        ({"cutmix_alpha": 1.0, "switch_prob": 1.5}, "switch_prob must be a number in [0, 1]"),
        ({"cutmix_alpha": 1.0, "prob": -0.1}, "prob must be a number in [0, 1]"),
        ({"mixup_alpha": 1.0, "label_smoothing": 2.0}, "label_smoothing must be a number in"),
        ({"mixup_alpha": 1.0, "labels": jnp.zeros((B, 3))}, "labels must have shape (6,)"),
    ],
)
def test_bad_arguments_raise_naming_the_field(kwargs, message):
    labels = kwargs.pop("labels", LABELS)
    with pytest.raises(ValueError, match=re.escape(message)):
        MIX(jax.random.key(0), distinct_images(), labels, **kwargs)
