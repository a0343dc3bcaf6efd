"""3. The input pipeline: images/s `recipe.data.train_batches` delivers for the default config,
against images/s the default train step consumes.

* loader alone: iterate `pipeline.train_batches` exactly as the trainer calls it (default
  config: MNIST-5k, global batch 128, augmentation on, uint8 images, one background thread, 2
  batches of prefetch) and do nothing else with the batches;
* step alone: the default full-recipe step (`train.steps.train_step`, pmap runner, one CPU
  device) on a fixed batch already on the device;
* both: the trainer's loop (next batch → `runner.prefetch`, which puts it on the device while
  the previous step runs → step; metrics fetched every `config.sync_every_steps` steps), i.e.
  how much of the step's speed survives the loader competing for the same two cores.

    python -m bench.loader [--batches 93] [--no-write]     # from the repository root
"""

import argparse
import sys
import time

from bench import common


def measure(args) -> dict:
    import jax

    from bench import jax_steps
    from recipe.data import datasets, pipeline
    from train import inputs, resolve, runners

    config = jax_steps.config_for()
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

    # Both: the trainer's loop, as `train.loop.train_and_evaluate` runs it.
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
    }


def render(r: dict) -> str:
    m = r["machine"]
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
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=93)  # 3 epochs of 31 batches
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-write", action="store_true", help=common.NO_WRITE_HELP)
    args = parser.parse_args()
    result = measure(args)
    text = render(result)
    if not args.no_write:
        common.publish("loader", result, text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
