"""4. The pmap, shard_map and jit runners on 1 and N forced CPU devices: step time, and the time
of the first step (tracing + compilation + one run) and of compilation alone; and the memory of
ResNet-50's compiled step per device, with and without `shard_params`.

The default config's model and global batch (128, split over the devices), the full-recipe
step (`train.steps.train_step`) mapped by `train.runners.pmap_runner`, `shard_map_runner` or
`jit_runner`. Each (runner, devices) pair is a worker process started with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` (XLA reads it once) and waits on every
step (CPU collectives deadlock when many steps are queued: the README's "Syncing").

The memory table compiles (and never runs) the full step of `configs/imagenet_resnet50_goyal.py`
(ResNet-50 at 224², 32 images per device, Nesterov SGD) under the jit runner on 1, 2 and 4
forced devices, its state replicated or split, and reads XLA's `memory_analysis()` of the
compiled program: the bytes of its arguments (the state and the batch), outputs, temporaries
and their peak, per device.

    python -m bench.runners                 # all cases, writes section 4
    XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python -m bench.runners worker --runner pmap --devices 2
    XLA_FLAGS=--xla_force_host_platform_device_count=4 \
        python -m bench.runners memory --devices 4
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
    runner = runners.RUNNERS[args.runner](jax.devices()[: args.devices])
    fn, state = jax_steps.step_fn("full", setup, axis_name=runner.axis_name)
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


CASES = [("pmap", 1), ("shard_map", 1), ("jit", 1), ("pmap", 2), ("shard_map", 2), ("jit", 2)]
MEMORY_DEVICES = (1, 2, 4)


def memory_worker(args) -> dict:
    """Per-device bytes of ResNet-50's compiled full step under the jit runner, the state
    replicated and split (`memory_analysis()`; compiled, not run)."""
    import jax

    from bench import jax_steps
    from bench.trainer_api import imagenet_resnet50_goyal

    assert jax.device_count() == args.devices, (jax.device_count(), args.devices)
    rows = {}
    for shard_params in (False, True):
        config = imagenet_resnet50_goyal.get_config()
        config.update_from_flattened_dict({
            "runner": "jit", "shard_params": shard_params, "batch_size": 32 * args.devices,
            "bn.scope": "device",
        })  # fmt: skip
        setup = jax_steps.build(config, device_count=args.devices)
        runner = setup.resolved.runner()
        fn, state = jax_steps.step_fn("full", setup, axis_name=runner.axis_name)
        batch = jax_steps.synthetic_batch(
            args.devices, config.batch_size, setup.image_shape, setup.num_classes
        )
        step = runner.map(fn, donate_argnums=(0,))
        t0 = time.perf_counter()
        compiled = step.lower(runner.place(state), runner.put(batch)).compile()
        memory = compiled.memory_analysis()
        rows["sharded" if shard_params else "replicated"] = {
            "compile_s": time.perf_counter() - t0,
            "arguments": memory.argument_size_in_bytes,
            "outputs": memory.output_size_in_bytes,
            "aliased": memory.alias_size_in_bytes,
            "temporaries": memory.temp_size_in_bytes,
            "peak": getattr(memory, "peak_memory_in_bytes", None),
            "state": sum(
                x.nbytes // len(x.sharding.device_set)
                if not x.sharding.is_fully_replicated
                else x.nbytes
                for x in jax.tree.leaves(runner.place(state))
            ),
        }
    return {"devices": args.devices, "rows": rows}


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
    memory = {}
    for devices in MEMORY_DEVICES:
        try:
            memory[devices] = common.run_worker(
                ["-m", "bench.runners", "memory", "--devices", str(devices)],
                env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"},
                timeout=timeout,
            )["rows"]
        except RuntimeError as error:
            memory[devices] = {"error": str(error)[-500:]}
    return {
        "machine": common.machine(),
        "rounds": rounds,
        "steps": steps,
        "cases": pooled,
        "memory": memory,
    }


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
        "## 4. pmap, shard_map and jit runners, 1 vs N devices",
        "",
        "Re-run: `make bench` (all of 1–4) or `.venv/bin/python -m bench.runners` (this section). "
        f"Run on {m['date']}: {m['cpu']}, {m['cores']} cores, jax {m['jax']}; load average "
        f"{m['load_before']} at the start.",
        "",
        "The default config's model and global batch of 128 (split over the devices), full-recipe "
        "step (`train.steps.train_step`) mapped by `train.runners.pmap_runner` or "
        "`shard_map_runner` (per-device programs) or run on the global batch by `jit_runner`, "
        "forced host devices (`XLA_FLAGS=--xla_force_host_platform_device_"
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
        *_render_memory(result.get("memory", {})),
    ])  # fmt: skip


def _mib(count: int | None) -> str:
    return "–" if count is None else f"{count / 2**20:,.0f}"


def _render_memory(memory: dict) -> list[str]:
    """The `shard_params` table: per-device MiB of ResNet-50's compiled jit step."""
    if not memory:
        return []
    rows = []
    for devices, cases in sorted(memory.items(), key=lambda item: int(item[0])):
        if "error" in cases:
            rows.append([devices, "failed", "", "", "", "", ""])
            continue
        for name in ("replicated", "sharded"):
            r = cases[name]
            rows.append([
                devices, name, _mib(r["state"]), _mib(r["arguments"]), _mib(r["outputs"]),
                _mib(r["temporaries"]), f"{r['compile_s']:.0f}",
            ])  # fmt: skip
    return [
        "",
        "Memory per device of ResNet-50's compiled step under the jit runner "
        "(`configs/imagenet_resnet50_goyal.py`, 224², 32 images per device, Nesterov SGD: the "
        "state is the weights, BN statistics and momentum), its state replicated or split over "
        "the devices (`--config.shard_params=true`), from XLA's `memory_analysis()` of the "
        "compiled program (compiled, not run; the CPU's buffer assignment). Arguments are "
        "the state and the batch (the state donated: the outputs reuse its buffers); "
        "temporaries include the gathered weights, activations and gradients.",
        "",
        common.md_table(
            [
                "devices",
                "state",
                "state MiB",
                "arguments MiB",
                "outputs MiB",
                "temporaries MiB",
                "compile s",
            ],
            rows,
        ),  # fmt: skip
    ]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "memory":
        parser = argparse.ArgumentParser()
        parser.add_argument("mode", choices=["memory"])
        parser.add_argument("--devices", type=int, default=1)
        common.emit(memory_worker(parser.parse_args()))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        parser = argparse.ArgumentParser()
        parser.add_argument("mode", choices=["worker"])
        parser.add_argument("--runner", choices=["pmap", "shard_map", "jit"], required=True)
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
