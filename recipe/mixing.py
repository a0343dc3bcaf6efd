"""Mixup and CutMix with label smoothing, as in timm's `Mixup` (mode 'batch'), jit-safe.

Mixup (Zhang et al. 2018) blends every image with a partner, x̃ = λ x + (1 − λ) x'; CutMix
(Yun et al. 2019) pastes a box of the partner, of area (1 − λ) · H · W, into it. λ ~ Beta(α, α).
The partner of example i is example B − 1 − i of the same batch (timm's `flip(0)`). The targets
are mixed the same way, with the label smoothing of Szegedy et al. applied once (timm's
`mixup_target`: smooth each one-hot, then mix):

    q̃ = λ · ((1 − ε) e_y + ε/K) + (1 − λ) · ((1 − ε) e_y' + ε/K)
      = (1 − ε) · (λ e_y + (1 − λ) e_y') + ε/K

Smoothing is affine and the mixing weights sum to 1, so smoothing the one-hots and then mixing
equals mixing and then smoothing; what matters is that the loss gets q̃ with no smoothing of its
own (`recipe.cross_entropy(logits, q̃)`, ε = 0 there), where smoothing twice would give
(1 − ε)² and a floor of ε/K · (2 − ε).

Randomness comes from a key, so a run that derives it from (seed, step) (`mixing_key`) mixes a
resumed step exactly as the uninterrupted run did. One key for the whole global batch gives
timm's per-batch λ; folding in the device index gives each device its own λ and box.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from recipe import checks, losses

# Folded into the seed's key first, so that mixing never shares a stream with other uses of it.
_MIXING_STREAM = 0x6D6978


def mixing_key(
    seed: int, step: jax.Array | int, axis_name: str | tuple[str, ...] | None = None
) -> jax.Array:
    """The key of step `step`'s mixing: a pure function of (seed, step[, device index]).

    Args:
      seed: the run's seed.
      step: the global step (the optimizer micro-step count), traced or not.
      axis_name: under `pmap`/`shard_map`, fold in the device index along this axis (or axes),
        so each device draws its own λ and box ('per device'); None: one draw for the global
        batch.

    >>> same = mixing_key(0, 5), mixing_key(0, 5)
    >>> other = mixing_key(0, 6)
    >>> data = [jax.random.key_data(k).tolist() for k in (*same, other)]
    >>> data[0] == data[1], data[0] == data[2]
    (True, False)
    """
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _MIXING_STREAM), step)
    if axis_name is not None:
        key = jax.random.fold_in(key, lax.axis_index(axis_name))
    return key


def mixup_cutmix(
    key: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    *,
    num_classes: int,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    switch_prob: float = 0.5,
    prob: float = 1.0,
    label_smoothing: float = 0.0,
    enabled: bool | jax.Array = True,
) -> tuple[jax.Array, jax.Array]:
    """Mixes a batch with Mixup or CutMix and returns it with its smoothed soft targets.

    With probability `prob` (else λ = 1, the batch unchanged): if both alphas are > 0, CutMix
    with probability `switch_prob` and Mixup otherwise; λ ~ Beta(α, α) of the one chosen.

    * Mixup: x̃ = λ x + (1 − λ) flip(x).
    * CutMix (timm's `rand_bbox`): cut = ⌊H √(1 − λ)⌋ × ⌊W √(1 − λ)⌋ around a uniform centre
      (cy, cx); rows [cy − ⌊cut_h/2⌋, cy + ⌊cut_h/2⌋) and likewise the columns, clipped to the
      image, come from flip(x); then λ ← 1 − box area / (H W) (timm's `correct_lam`), so the
      targets weigh each image by the area it really covers.

    Targets: q̃ = (1 − ε)(λ e_y + (1 − λ) e_flip(y)) + ε/K, each row summing to 1; pass them to
    `recipe.cross_entropy` with no further smoothing. Everything is traced: jit- and pmap-safe,
    `enabled` may be a traced bool (e.g. step < the epoch mixing stops, timm's
    `--mixup-off-epoch`).

    Args:
      key: a PRNG key, e.g. `mixing_key(seed, step)`.
      images: [B, H, W, C].
      labels: [B] integer classes, or [B, K] one-hot / probability targets.
      num_classes: K.
      mixup_alpha: α of Mixup; 0 turns it off (timm's `--mixup`).
      cutmix_alpha: α of CutMix; 0 turns it off (timm's `--cutmix`).
      switch_prob: probability of CutMix when both are on (`--mixup-switch-prob`).
      prob: probability of mixing a batch at all (`--mixup-prob`).
      label_smoothing: ε, applied once to the mixed targets (`--smoothing`).
      enabled: False returns the images unchanged with smoothed one-hot targets.

    Returns:
      (mixed images in the input's dtype, float32 targets [B, K]).

    Raises:
      ValueError: if both alphas are 0, an argument is out of range, or the labels' shape
        matches neither form.

    >>> images = jnp.stack([jnp.zeros((4, 4, 1)), jnp.ones((4, 4, 1))])
    >>> mixed, targets = mixup_cutmix(jax.random.key(0), images, jnp.array([0, 1]),
    ...                               num_classes=2, cutmix_alpha=1.0)
    >>> area = float(mixed[0].mean())  # the box pasted from the other image
    >>> bool(jnp.allclose(targets[0], jnp.array([1 - area, area])))
    True

    In a Flax NNX train step, the mixed batch and its targets go to the model and the loss:

    >>> import optax
    >>> from flax import nnx
    >>> model = nnx.Linear(16, 2, rngs=nnx.Rngs(0))
    >>> def loss_fn(model, images, targets):
    ...     return optax.softmax_cross_entropy(model(images.reshape(2, 16)), targets).mean()
    >>> loss, grads = nnx.value_and_grad(loss_fn)(model, mixed, targets)
    >>> loss.shape
    ()
    """
    checks.check_positive_int("num_classes", num_classes)
    if images.ndim != 4:
        raise ValueError(f"images must have shape [B, H, W, C], got {images.shape}")
    draw = draw_mixing(
        key,
        images.shape[1],
        images.shape[2],
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        switch_prob=switch_prob,
        prob=prob,
        enabled=enabled,
    )
    return apply_mixing(
        draw, images, labels, num_classes=num_classes, label_smoothing=label_smoothing
    )


class MixingDraw(NamedTuple):
    """The random choices of one batch's mixing (`draw_mixing`), for `apply_mixing`.

    Attributes:
      apply: whether the batch is mixed at all (bool).
      use_cutmix: CutMix rather than Mixup (bool).
      mixup_lam: Mixup's λ.
      box: CutMix's box, a [H, W] bool mask of the pixels taken from the partner.
      cutmix_lam: CutMix's λ, 1 − the box's area / (H W).
    """

    apply: jax.Array
    use_cutmix: jax.Array
    mixup_lam: jax.Array
    box: jax.Array
    cutmix_lam: jax.Array


def draw_mixing(
    key: jax.Array,
    height: int,
    width: int,
    *,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    switch_prob: float = 0.5,
    prob: float = 1.0,
    enabled: bool | jax.Array = True,
) -> MixingDraw:
    """The random part of `mixup_cutmix` for images of `height` × `width`: whether to mix, which
    of the two, λ and CutMix's box (arguments as `mixup_cutmix`'s). Jit- and vmap-safe: a map of
    it over keys draws many batches' mixings at once (e.g. each device's slice of a global
    batch, before `apply_mixing` maps over the slices).

    Raises:
      ValueError: if both alphas are 0, or an argument is out of range.

    >>> draw = draw_mixing(jax.random.key(0), 4, 4, cutmix_alpha=1.0)
    >>> draw.box.shape, bool(draw.use_cutmix)
    ((4, 4), True)
    """
    checks.check_non_negative("mixup_alpha", mixup_alpha)
    checks.check_non_negative("cutmix_alpha", cutmix_alpha)
    if mixup_alpha == 0 and cutmix_alpha == 0:
        raise ValueError("mixup_alpha or cutmix_alpha must be > 0 to mix, got both 0")
    checks.check_in_unit_interval("switch_prob", switch_prob)
    checks.check_in_unit_interval("prob", prob)
    apply_key, switch_key, lam_key, box_key = jax.random.split(key, 4)
    apply = jnp.logical_and(enabled, jax.random.uniform(apply_key) < prob)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(switch_key) < switch_prob
    else:
        use_cutmix = jnp.asarray(cutmix_alpha > 0)
    # λ of Mixup and of CutMix from one Beta sampler (each compiles a rejection loop).
    alphas = jnp.array([mixup_alpha or 1.0, cutmix_alpha or 1.0], jnp.float32)
    mixup_drawn, cutmix_drawn = jax.random.beta(lam_key, alphas, alphas)
    mixup_lam = mixup_drawn if mixup_alpha > 0 else jnp.float32(1.0)

    # CutMix's box, and λ corrected to its area after clipping.
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    if cutmix_alpha > 0:
        ratio = jnp.sqrt(1.0 - cutmix_drawn)
        half_h = jnp.floor(height * ratio).astype(jnp.int32) // 2
        half_w = jnp.floor(width * ratio).astype(jnp.int32) // 2
        y_key, x_key = jax.random.split(box_key)
        cy = jax.random.randint(y_key, (), 0, height)
        cx = jax.random.randint(x_key, (), 0, width)
        y0, y1 = jnp.clip(cy - half_h, 0, height), jnp.clip(cy + half_h, 0, height)
        x0, x1 = jnp.clip(cx - half_w, 0, width), jnp.clip(cx + half_w, 0, width)
        box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
        cutmix_lam = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
    else:
        box, cutmix_lam = jnp.zeros((height, width), bool), jnp.float32(1.0)
    return MixingDraw(apply, use_cutmix, mixup_lam, box, cutmix_lam)


def apply_mixing(
    draw: MixingDraw,
    images: jax.Array,
    labels: jax.Array,
    *,
    num_classes: int,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """The deterministic part of `mixup_cutmix`: a batch mixed as `draw` says, each image with
    its partner (example B − 1 − i), and its smoothed, mixed targets (arguments and result as
    `mixup_cutmix`'s).

    Raises:
      ValueError: if the labels' shape matches neither form.
    """
    batch = images.shape[0]
    if labels.shape == (batch,):
        one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    elif labels.shape == (batch, num_classes):
        one_hot = labels.astype(jnp.float32)
    else:
        raise ValueError(
            f"labels must have shape {(batch,)} (integer ids) or {(batch, num_classes)}, got "
            f"{labels.shape}"
        )
    smoothed = losses.smooth_labels(one_hot, label_smoothing)
    partner = jnp.flip(images, axis=0)
    mixup_images = draw.mixup_lam * images + (1.0 - draw.mixup_lam) * partner
    cutmix_images = jnp.where(draw.box[None, :, :, None], partner, images)
    lam = jnp.where(draw.apply, jnp.where(draw.use_cutmix, draw.cutmix_lam, draw.mixup_lam), 1.0)
    mixed = jnp.where(draw.apply, jnp.where(draw.use_cutmix, cutmix_images, mixup_images), images)
    targets = lam * smoothed + (1.0 - lam) * jnp.flip(smoothed, axis=0)
    return mixed.astype(images.dtype), targets.astype(jnp.float32)
