"""4. The pmap and shard_map runners on 1 and N forced CPU devices: step time, and the time of
the first step (tracing + compilation + one run) and of compilation alone.

The default config's model and global batch (128, split over the devices), the full-recipe
step (`train.steps.train_step`) mapped by `train.runners.pmap_runner` or `shard_map_runner`.
Each (runner, devices) pair is a worker process started with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` (XLA reads it once) and waits on every
step (CPU collectives deadlock when many steps are queued: the README's "Syncing").

    python -m bench.runners                 # all cases, writes section 4
    XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python -m bench.runners worker --runner pmap --devices 2
"""

import argparse
import functools
import sys
import time

from bench import common


def worker(args) -> dict:
    import jax

    from bench import jax_steps
    from bench.trainer_api import config_for, runners

    assert jax.device_count() == args.devices, (jax.device_count(), args.devices)
    config = config_for(runner=args.runner)
    setup = jax_steps.build(config)
    fn, state = jax_steps.step_fn("full", setup)
    runner = runners.RUNNERS[args.runner](jax.devices()[: args.devices])
    batch = jax_steps.synthetic_batch(
        args.devices, config.batch_size, setup.image_shape, setup.num_classes
    )
    # The first call, in a fresh process: tracing, compilation and one run.
    stepper = jax_steps.Stepper(runner, fn, state, batch)
    t0 = time.perf_counter()
    stepper()
    first_s = time.perf_counter() - t0
    # Compilation alone, ahead of time, of a fresh wrapper (a new function object misses
    # jax's in-memory caches; the persistent compilation cache is off).
    probe = runner.map(functools.partial(fn), donate_argnums=(0,))
    t0 = time.perf_counter()
    probe.lower(stepper.state, stepper.batch).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        stepper()
    wall, cpu = common.time_interleaved({"step": stepper}, rounds=args.steps)
    return {
        "runner": args.runner,
        "devices": args.devices,
        "per_device_batch": config.batch_size // args.devices,
        "compile_s": compile_s,
        "first_step_s": first_s,
        "step_ms": 1e3 * common.median(wall["step"]),
        "step_q": [1e3 * q for q in common.quartiles(wall["step"])],
        "cpu_ms": 1e3 * common.median(cpu["step"]),
    }


CASES = [("pmap", 1), ("shard_map", 1), ("pmap", 2), ("shard_map", 2)]


def measure(rounds: int, steps: int, timeout: float = 600) -> dict:
    import random

    pooled: dict[str, dict] = {}
    order = list(CASES)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for runner, devices in order:
            key = f"{runner}/{devices}"
            try:
                r = common.run_worker(
                    ["-m", "bench.runners", "worker", "--runner", runner, "--devices", str(devices),
                     "--steps", str(steps)],
                    env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"},
                    timeout=timeout,
                )  # fmt: skip
            except RuntimeError as error:
                pooled[key] = {"error": str(error)[-500:]}
                continue
            p = pooled.setdefault(key, {"step": [], "compile": [], "first": [], "cpu": []})
            p["step"].append(r["step_ms"])
            p["cpu"].append(r["cpu_ms"])
            p["compile"].append(r["compile_s"])
            p["first"].append(r["first_step_s"])
            p["per_device_batch"] = r["per_device_batch"]
    return {"machine": common.machine(), "rounds": rounds, "steps": steps, "cases": pooled}


def render(result: dict) -> str:
    m = result["machine"]
    rows = []
    for runner, devices in CASES:
        p = result["cases"].get(f"{runner}/{devices}", {"error": "not run"})
        if "error" in p:
            rows.append([runner, devices, "failed", "", "", "", ""])
            continue
        rows.append([
            runner,
            devices,
            p["per_device_batch"],
            f"{common.median(p['step']):.0f}",
            f"{common.median(p['cpu']):.0f}",
            f"{common.median(p['first']):.1f}",
            f"{common.median(p['compile']):.1f}",
        ])  # fmt: skip
    return "\n".join([
        "## 4. pmap vs shard_map runners, 1 vs N devices",
        "",
        "Re-run: `make bench` (all of 1–4) or `.venv/bin/python -m bench.runners` (this section). "
        f"Run on {m['date']}: {m['cpu']}, {m['cores']} cores, jax {m['jax']}; load average "
        f"{m['load_before']} at the start.",
        "",
        "The default config's model and global batch of 128 (split over the devices), full-recipe "
        "step (`train.steps.train_step`) mapped by `train.runners.pmap_runner` or "
        "`shard_map_runner`, forced host devices (`XLA_FLAGS=--xla_force_host_platform_device_"
        f"count=N`), one worker process per case, {result['rounds']} rounds in random order, "
        f"{result['steps']} timed steps per worker, waiting on every step. Step ms is the median "
        "over rounds of each worker's median; 'first step' is the first call in a fresh process "
        "(tracing + compilation + one step); 'compile' is `lower(...).compile()` alone, ahead of "
        "time. The machine has 2 cores: N > 2 devices share them.",
        "",
        common.md_table(
            ["runner", "devices", "batch per device", "step ms", "CPU ms per step",
             "first step s", "compile s"],
            rows,
        ),  # fmt: skip
    ])  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        parser = argparse.ArgumentParser()
        parser.add_argument("mode", choices=["worker"])
        parser.add_argument("--runner", choices=["pmap", "shard_map"], required=True)
        parser.add_argument("--devices", type=int, default=1)
        parser.add_argument("--steps", type=int, default=30)
        parser.add_argument("--warmup", type=int, default=3)
        common.emit(worker(parser.parse_args()))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-write", action="store_true", help=common.NO_WRITE_HELP)
    args = parser.parse_args()
    result = measure(args.rounds, args.steps)
    text = render(result)
    if not args.no_write:
        common.publish("runners", result, text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
