"""A trained model from a trainer's work dir, with the library alone.

The trainer (`python -m train`, run from a checkout) writes the run's config as
`<workdir>/config.json`, its dataset's spec as `<workdir>/dataset.json` and orbax checkpoints of
its train state as `<workdir>/checkpoints/<step>/state` (a pytree whose `params` and
`batch_stats` are the model's variables). `load_run` reads them back into the model the config
names, for inference in your own code: no trainer, no config files, no data, no accelerator
needed, and nothing beyond the core install.
"""

import dataclasses
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from recipe import models
from recipe.dataset_spec import DatasetSpec

__all__ = ["SavedRun", "load_run"]

# The run's dataset's spec in its work dir (`DatasetSpec.to_json`), written by the trainer.
DATASET_FILE = "dataset.json"


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """A trained model from a work dir.

    For a linen run, `model.apply(variables, images, train=False)` gives the logits of a
    float32 batch of images normalised as the training input was: `(x / 255 − mean) / std`
    with the dataset's per-channel `spec.mean` and `spec.std`, at `image_shape`. For an NNX
    run (`flax_api='nnx'`), `model` holds the weights: `model.eval()`, then `model(images)`.

    Attributes:
      model: the model the checkpoint belongs to, with per-device BN (in eval mode BN uses only
        the running statistics, so every scope the run trained with evaluates the same): the
        linen `recipe.models.ResNet`, or for an NNX run the `recipe.nnx.ResNet` holding the
        checkpoint's weights and statistics.
      variables: {'params': ..., 'batch_stats': ...}.
      config: the run's config (from `<workdir>/config.json`).
      spec: its dataset's spec (classes and their names, image statistics),
        `recipe.dataset_spec.DatasetSpec` (also ``recipe.data.DatasetSpec``).
      image_shape: the model's input shape (height, width, channels).
      step: the checkpoint's step.
    """

    model: Any
    variables: dict[str, Any]
    config: ml_collections.ConfigDict
    spec: DatasetSpec
    image_shape: tuple[int, int, int]
    step: int


def load_run(workdir: str, step: int | None = None) -> SavedRun:
    """Loads the model, weights and BatchNorm statistics of a trainer work dir's latest (or the
    given) checkpoint.

    >>> run = load_run("runs/default")  # doctest: +SKIP
    >>> logits = run.model.apply(run.variables, images, train=False)  # doctest: +SKIP
    >>> run = load_run("runs/nnx")  # a run with flax_api='nnx'  # doctest: +SKIP
    >>> run.model.eval()  # doctest: +SKIP
    >>> logits = run.model(images)  # doctest: +SKIP

    Args:
      workdir: a work dir of `python -m train`: a local path, relative to the working directory
        or absolute, or any URL `etils.epath` reaches.
      step: the checkpoint to load; None: the latest.

    Raises:
      FileNotFoundError: `workdir` holds no config.json, no checkpoint, or not checkpoint
        `step`.
    """
    workdir = epath.Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} does not exist: not a trainer's work dir")
    config = ml_collections.ConfigDict(_tuples(json.loads(config_path.read_text())))
    checkpoint_dir = workdir / "checkpoints"
    # Orbax writes a step into a temporary directory and renames it to the step when complete.
    saved = []
    if checkpoint_dir.exists():
        saved = sorted(int(p.name) for p in checkpoint_dir.iterdir() if p.name.isdigit())
    if not saved or (step is not None and step not in saved):
        wanted = "no checkpoint" if step is None else f"no checkpoint {step}"
        raise FileNotFoundError(f"{checkpoint_dir} holds {wanted} (saved: {saved})")
    step = saved[-1] if step is None else step
    spec = _dataset_spec(workdir, config)
    size = config.image_size
    image_shape = (size, size, spec.image_shape[2]) if size else spec.image_shape
    model = model_of_config(config, num_classes=spec.num_classes, in_features=image_shape[2])
    variables = _variables(checkpoint_dir / str(step) / "state")
    return SavedRun(
        model=model if isinstance(model, models.ResNet) else model.module(variables),
        variables=variables,
        config=config,
        spec=spec,
        image_shape=image_shape,
        step=step,
    )


def _dataset_spec(workdir: epath.Path, config: ml_collections.ConfigDict) -> DatasetSpec:
    """The run's dataset's spec from `dataset.json`; for a work dir written before the trainer
    saved it, the spec of the dataset the config names (this needs the `data` extra)."""
    path = workdir / DATASET_FILE
    if path.exists():
        return DatasetSpec.from_json(json.loads(path.read_text()))
    from recipe.data import datasets  # on demand: the `data` extra

    return datasets.get_dataset_spec(config.dataset)


def model_of_config(
    config: ml_collections.ConfigDict,
    *,
    num_classes: int,
    in_features: int,
    bn_scope: models.BNScope | None = None,
) -> Any:
    """The model a trainer config names: the linen `recipe.models.ResNet`, or for
    `flax_api='nnx'` the `recipe.nnx.ResNet` as a `recipe.nnx.FunctionalModel` (linen's `init`
    and `apply` over the same variables), with the run's width, stages, BN momentum, dtype and
    γ init, `num_classes` logits, `in_features` input channels and `bn_scope` (None: per
    device)."""
    fields = dict(
        num_classes=num_classes,
        num_filters=config.num_filters,
        # Absent from the config.json of runs saved before the field existed.
        **({"stage_sizes": tuple(config.stage_sizes)} if config.get("stage_sizes") else {}),
        bn_scope=bn_scope or models.BNScope.per_device(),
        bn_momentum=config.bn.momentum,
        dtype=jnp.dtype(config.dtype),
        zero_init_last_bn=config.zero_init_last_bn,
    )
    if config.get("flax_api", "linen") == "linen":
        return models.create_model(config.model, **fields)
    from recipe import nnx as recipe_nnx  # on demand: linen runs never import flax.nnx

    return recipe_nnx.FunctionalModel(
        functools.partial(recipe_nnx.create_model, config.model, in_features=in_features, **fields)
    )


def _variables(path: epath.Path) -> dict[str, Any]:
    """The model's variables from a saved train state (its other items, such as the optimizer
    state, are not read), onto the default device."""
    import orbax.checkpoint as ocp  # on demand: `import recipe` stays light

    # orbax refuses relative paths ("Checkpoint path should be absolute"), and users type them:
    # load_run("runs/default"). gs:// and other URLs are absolute already.
    path = path if path.is_absolute() else path.absolute()
    handler = ocp.PyTreeCheckpointHandler()
    try:
        saved = handler.metadata(path).tree
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
            {key: saved[key] for key in ("params", "batch_stats")},
        )
        restore = ocp.args.PyTreeRestore(
            target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True,
        )
        return handler.restore(path, args=restore)
    finally:
        handler.close()


def _tuples(values: Any) -> Any:
    """JSON's lists back to the tuples the config had."""
    if isinstance(values, dict):
        return {key: _tuples(value) for key, value in values.items()}
    return tuple(_tuples(v) for v in values) if isinstance(values, list) else values
