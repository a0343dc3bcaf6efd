"""3. The input pipeline: images/s `recipe.data.train_batches` delivers for the default config,
against images/s the default train step consumes.

* loader alone: iterate `pipeline.train_batches` exactly as the trainer calls it (default
  config: MNIST-5k, global batch 128, augmentation on, uint8 images, one background thread, 2
  batches of prefetch) and do nothing else with the batches;
* step alone: the default full-recipe step (`train.steps.train_step`, pmap runner, one CPU
  device) on a fixed batch already on the device;
* both: the trainer's loop (next batch → `runner.prefetch`, which puts it on the device while
  the previous step runs → step; metrics fetched every `config.sync_every_steps` steps), i.e.
  how much of the step's speed survives the loader competing for the same two cores;
* batched / per example: CPU per batch of `train_batches`, which computes each batch as one
  array (each example only draws from its own generator), against the same batches built one
  grain map call per example (its read, its generator, `augment_image`) and then stacked, as
  the loader did before; at the default config's size and at the tests' (14² from 28², batch
  1,000, where the resize is a 2×2 block mean), rounds interleaved, no prefetch thread.

    python -m bench.loader [--batches 93] [--no-write]     # from the repository root
"""

import argparse
import sys
import time

from bench import common

# (label, image_size, global batch): the default config's input, and the tests' tiny config's.
BATCHED_CASES = (
    ("default: 28², batch 128", None, 128),
    ("tests: 14² from 28², batch 1,000", 14, 1000),
)


def per_example_batches(source, spec, *, seed: int, global_batch: int, image_size, num_steps: int):
    """The loader's batches built one grain map call per example, then stacked: the same
    examples and pixels as `train_batches` (one process, one device), for comparison."""
    import grain
    import numpy as np

    from recipe.data import pipeline

    size = (image_size, image_size) if image_size else spec.image_shape[:2]
    epoch_steps = pipeline.steps_per_epoch(len(source), global_batch)

    def example(position: int) -> dict:
        step, slot = divmod(position, global_batch)
        epoch, step_in_epoch = divmod(step, epoch_steps)
        order = pipeline.epoch_permutation(seed, epoch, len(source))
        index = int(order[step_in_epoch * global_batch + slot])
        rng = pipeline.augmentation_rng(seed, epoch, index)
        stored = source[index]
        return {"image": pipeline.augment_image(stored["image"], spec, size, rng),
                "label": stored["label"], "index": index}  # fmt: skip

    def stack(examples: list[dict]) -> dict:
        return {key: np.stack([e[key] for e in examples]) for key in examples[0]}

    dataset = grain.MapDataset.range(num_steps * global_batch).map(example)
    return iter(dataset.batch(global_batch, batch_fn=stack))


def compare_batched(source, spec, seed: int, rounds: int, steps: int) -> dict:
    """CPU seconds per batch, batched pipeline and per example, for each of BATCHED_CASES."""
    import numpy as np

    from recipe.data import pipeline

    results = {}
    for label, image_size, global_batch in BATCHED_CASES:
        common_args = dict(seed=seed, global_batch=global_batch, image_size=image_size)

        def batched(args=common_args):
            return pipeline.train_batches(
                source, spec, process_index=0, process_count=1, local_device_count=1,
                num_steps=steps, prefetch_batches=0, normalize=False, **args,
            )  # fmt: skip

        def per_example(args=common_args):
            return per_example_batches(source, spec, num_steps=steps, **args)

        first, other = next(batched()), next(per_example())
        assert np.array_equal(first["image"][0], other["image"]), "not the same batches"
        cpu = {"batched": [], "per_example": []}
        for _ in range(rounds):
            for name, batches in (("batched", batched), ("per_example", per_example)):
                c0 = time.process_time()
                for _ in batches():
                    pass
                cpu[name].append((time.process_time() - c0) / steps)
        results[label] = cpu
    return results


def measure(args) -> dict:
    import jax

    from bench import jax_steps
    from bench.trainer_api import config_for, inputs, resolve, runners
    from recipe.data import datasets, pipeline

    config = config_for()
    spec = datasets.get_dataset_spec(config.dataset)
    source = datasets.load_source(config.dataset, spec.train_split, config.data_dir)
    # As the trainer calls the loader (uint8 images, its worker count), on one device.
    layout = {**inputs.loader_options(resolve.resolve(config, 1)), "local_device_count": 1}

    def batches(n):
        return pipeline.train_batches(
            source,
            spec,
            seed=config.seed,
            global_batch=config.batch_size,
            num_steps=n,
            augment=config.augment,
            **layout,
        )

    # Loader alone (the first batch includes opening the source and starting the thread).
    iterator = batches(args.batches + 1)
    t0 = time.perf_counter()
    next(iterator)
    first_batch_s = time.perf_counter() - t0
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in iterator:
        pass
    loader_s = time.perf_counter() - t0
    loader_cpu_s = time.process_time() - c0
    loader_ips = args.batches * config.batch_size / loader_s

    batched = compare_batched(source, spec, config.seed, args.rounds, args.compare_steps)

    # Step alone.
    setup = jax_steps.build(config)
    fn, state = jax_steps.step_fn("full", setup)
    runner = runners.RUNNERS[config.runner](jax.devices()[:1])
    fixed = next(batches(1))
    stepper = jax_steps.Stepper(runner, fn, state, inputs.model_inputs(fixed))
    for _ in range(3):
        stepper()
    wall, _ = common.time_interleaved({"step": stepper}, rounds=args.steps)
    step_s = common.median(wall["step"])
    step_ips = config.batch_size / step_s

    # Both: the trainer's loop, as `train_and_evaluate` runs it.
    device_batches = runner.prefetch(
        map(inputs.model_inputs, batches(args.steps + 3)), config.device_prefetch
    )
    for _ in range(3):
        stepper.state, metrics = stepper.step(stepper.state, next(device_batches))
        jax.block_until_ready(metrics)
    pending = []
    t0 = time.perf_counter()
    for batch in device_batches:
        stepper.state, metrics = stepper.step(stepper.state, batch)
        pending.append(metrics)
        if len(pending) >= config.sync_every_steps:
            jax.block_until_ready(pending)
            pending.clear()
    jax.block_until_ready((stepper.state, pending))
    both_ips = args.steps * config.batch_size / (time.perf_counter() - t0)

    return {
        "machine": common.machine(),
        "batch_size": config.batch_size,
        "dataset": config.dataset,
        "batches": args.batches,
        "first_batch_s": first_batch_s,
        "loader_images_per_s": loader_ips,
        "loader_cpu_s_per_batch": loader_cpu_s / args.batches,
        "step_ms": 1e3 * step_s,
        "step_images_per_s": step_ips,
        "ratio": loader_ips / step_ips,
        "loop_images_per_s": both_ips,
        "loop_vs_step": both_ips / step_ips,
        "sync_every_steps": config.sync_every_steps,
        "batched_vs_per_example": batched,
    }


def render(r: dict) -> str:
    m, batched = r["machine"], r["batched_vs_per_example"]
    rows = [
        ["loader alone (`recipe.data.train_batches`)", f"{r['loader_images_per_s']:.0f}",
         f"{1e3 * r['batch_size'] / r['loader_images_per_s']:.1f}"],
        ["train step alone (full recipe, batch on device)", f"{r['step_images_per_s']:.0f}",
         f"{r['step_ms']:.1f}"],
        ["trainer loop: loader → `runner.prefetch` → step, metrics fetched every "
         f"{r['sync_every_steps']} steps", f"{r['loop_images_per_s']:.0f}",
         f"{1e3 * r['batch_size'] / r['loop_images_per_s']:.1f}"],
    ]  # fmt: skip
    return "\n".join([
        "## 3. Input pipeline",
        "",
        "Re-run: `make bench` (all of 1–4) or `.venv/bin/python -m bench.loader` (this section). "
        f"Run on {m['date']}: {m['cpu']}, {m['cores']} cores, grain {m['grain']}; load average "
        f"{m['load_before']} at the start.",
        "",
        f"Default config: {r['dataset']}, global batch {r['batch_size']}, augmentation on, one "
        "device; the loader as the trainer calls it (uint8 images, one background thread, 2 "
        f"batches of prefetch), {r['batches']} batches (3 epochs) consumed as fast as possible "
        f"after the first ({r['first_batch_s'] * 1e3:.0f} ms, opening the source). The loader "
        f"spends {1e3 * r['loader_cpu_s_per_batch']:.1f} ms of CPU per batch.",
        "",
        common.md_table(["", "images/s", "ms per batch of 128"], rows),
        "",
        f"**Loader / step: {r['ratio']:.0f}×** (target ≥ 5×). With the loader running beside the "
        f"step on the same two cores, the loop keeps {100 * r['loop_vs_step']:.0f}% of the "
        "step's speed.",
        "",
        "Each batch is computed as one array (pad, crop, mirror and resize of all its images "
        "at once; each example only draws from its own generator), against the same batches "
        "built one grain map call per example and stacked, as the loader did before. CPU ms "
        f"per batch, median of {len(next(iter(batched.values()))['batched'])} interleaved "
        "rounds, no prefetch thread:",
        "",
        common.md_table(["input", "batched", "per example", "per example / batched"], [
            [label, f"{1e3 * common.median(c['batched']):.1f}",
             f"{1e3 * common.median(c['per_example']):.1f}",
             f"{common.median(c['per_example']) / common.median(c['batched']):.2f}×"]
            for label, c in batched.items()
        ]),  # fmt: skip
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=93)  # 3 epochs of 31 batches
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5, help="batched / per-example rounds")
    parser.add_argument("--compare-steps", type=int, default=12, help="batches per round")
    parser.add_argument("--no-write", action="store_true", help=common.NO_WRITE_HELP)
    args = parser.parse_args()
    result = measure(args)
    text = render(result)
    if not args.no_write:
        common.publish("loader", result, text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
