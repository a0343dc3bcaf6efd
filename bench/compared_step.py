"""The train step `bench/vs_torch.py` and `bench/profile_step.py` time, as a worker's command
line describes it (model, width, image size, channels, batch, dtype, ...), its fixed synthetic
batch, and the JAX side's step: the project's full-recipe step on one device."""

import argparse

import numpy as np

# Where each image size comes from: the dataset whose spec has that shape.
DATASETS = {(28, 1): "mnist5k", (32, 3): "cifar10"}


def worker_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The step a worker times, from its command line ('worker' and the options below)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["worker"])
    parser.add_argument("--framework", choices=["jax", "torch"], required=True)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--stem", default=None)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--image", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--torch-compile", action="store_true")
    return parser.parse_args(argv)


def fixed_batch(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(images NHWC float32, int32 labels): the same synthetic batch for every framework."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.batch, args.image, args.image, args.channels))
    labels = rng.integers(0, 10, args.batch)
    return images.astype(np.float32), labels.astype(np.int32)


def jax_stepper(args):
    """(setup, stepper): the full-recipe step of the model `args` describe, on one device, with
    its fixed batch."""
    import jax

    from bench import jax_steps
    from bench.trainer_api import config_for, runners

    config = config_for(
        dataset=DATASETS[(args.image, args.channels)],
        model=args.model,
        num_filters=args.width,
        batch_size=args.batch,
        dtype=args.dtype,
    )
    setup = jax_steps.build(config, stem=args.stem)
    fn, state = jax_steps.step_fn("full", setup)
    runner = runners.RUNNERS[config.runner](jax.devices()[:1])
    images, labels = fixed_batch(args)
    batch = {"image": images[None], "label": labels[None]}
    return setup, jax_steps.Stepper(runner, fn, state, batch)
