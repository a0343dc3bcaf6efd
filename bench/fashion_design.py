"""Sizing the Fashion-MNIST reproduction (issue 16): what an epoch costs, and whether running
several seeds inside one compiled program (`jax.vmap`) uses the cores better.

Three measurements, each in worker subprocesses under `timeout -s KILL`:

* ``epoch``: the trainer itself (`train.loop.train_and_evaluate`) on fashion_mnist with
  the reproduction's setting (`bench.table1.SETTING`: ghost BN over 32, zero-γ, label
  smoothing, ...) and each candidate model, width, image size and batch, pinned to one core
  (`taskset -c 0`): the loader, the step and the trainer's loop share that core, as in a
  reproduction run. The trainer's metrics writer is wrapped to note the process's CPU time and
  the wall time at each training record; after ``--seconds`` of steady state (past the first
  record, which holds the compile) the worker sends itself SIGTERM and the trainer stops
  cleanly. Seconds per epoch = steady seconds per step × steps per epoch. Each candidate runs
  with the splits held decoded (the trainer's `data_in_memory`: `recipe.data.InMemorySource`
  around what `load_source` returns); two also from the TFDS source (PNG decoded every epoch).
* ``loader``: `recipe.data.train_batches` alone (augmentation on, no prefetch thread), one core,
  over the TFDS source and over `InMemorySource`: its CPU seconds per 60,000 images, the part
  of an epoch a model cannot make faster, and the one-off decode into memory.
* ``vmap``: the trainer's own train step (`train.steps.train_step`, with the model and
  optimizer of `train.resolve.resolve`) mapped by `jax.vmap` over S seeds' states and
  batches, on one batch held on the device (no loader), against S = 1: per seed-step CPU and
  wall time on one pinned core, and on both cores, one process running S = 2 against two
  pinned processes running S = 1 side by side (the images per second of the machine).

    python -m bench.fashion_design                 # all three; bench/results/fashion_design.json
    python -m bench.fashion_design --only epoch --seconds 40 --no-write

Run it on a quiet machine (`flock /tmp/recipe-bench.lock` when several agents share it). It
needs fashion_mnist prepared (or its IDX files installed: `apt-get install dataset-fashion-mnist`).
"""

import argparse
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from bench import common, table1

RESULTS_FILE = common.RESULTS / "fashion_design.json"
NUM_TRAIN = 60_000

# (model, width, image size, batch): the candidates of the issue, plus a batch-size ladder on the
# smallest, since Figure 1's runs span kn = 64 … 8k.
EPOCH_GRID = [
    (model, width, size, batch)
    for model, width in (("resnet8", 8), ("resnet8", 16))
    for size in (14, 28)
    for batch in (32, 1024)
] + [("resnet8", 8, 14, batch) for batch in (128, 256, 4096, 8192)]
# Also timed reading the TFDS source as the trainer does today (PNG decoded every epoch).
TFDS_SOURCE_GRID = [("resnet8", 8, 14, 32), ("resnet8", 8, 14, 1024)]


def _config(overrides: dict):
    from bench import trainer_api

    return trainer_api.config_for(
        **{
            **table1.SETTING,
            "dataset": "fashion_mnist",
            # Evaluation only at the end: the timed steps hold training alone.
            "eval_every_epochs": table1.SETTING["num_epochs"],
            **overrides,
        }
    )


# ---------------------------------------------------------------------------------------------
# Workers.


def epoch_worker(overrides: dict, seconds: float, source: str) -> dict:
    from bench import trainer_api

    # The splits held decoded (the trainer's data_in_memory, recipe.data.InMemorySource), or the
    # TFDS source that decodes every PNG at every read.
    config = _config({**overrides, "data_in_memory": source == "memory"})
    steps_per_epoch = NUM_TRAIN // config.batch_size
    config.log_every_steps = max(1, min(20, steps_per_epoch // 8))
    marks: list[tuple[int, float, float]] = []  # (step, process CPU s, wall s) per train record

    class TimedWriter(trainer_api.MetricsWriter):
        def write(self, step, kind, values):
            super().write(step, kind, values)
            if kind != "train":
                return
            marks.append((step, time.process_time(), time.perf_counter()))
            if len(marks) > 1 and marks[-1][1] - marks[0][1] > seconds:
                os.kill(os.getpid(), signal.SIGTERM)

    trainer_api.write_metrics_with(TimedWriter)
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        try:
            trainer_api.train_and_evaluate(config, workdir)
        except trainer_api.preemption.Stopped:
            pass
    (step0, cpu0, wall0), (step1, cpu1, wall1) = marks[0], marks[-1]
    steps = step1 - step0
    return {
        "overrides": overrides,
        "source": source,
        "steps_per_epoch": steps_per_epoch,
        "timed_steps": steps,
        "cpu_s_per_step": (cpu1 - cpu0) / steps,
        "wall_s_per_step": (wall1 - wall0) / steps,
        "cpu_s_per_epoch": (cpu1 - cpu0) / steps * steps_per_epoch,
        "wall_s_per_epoch": (wall1 - wall0) / steps * steps_per_epoch,
        # Start-up to the first record: imports, data, init, compile and the first steps.
        "first_record_wall_s": wall0 - start_wall,
        "first_record_cpu_s": cpu0 - start_cpu,
        "first_record_step": step0,
    }


def loader_worker(image_size: int, batch: int, source_kind: str) -> dict:
    from recipe.data import datasets, pipeline

    spec = datasets.get_dataset_spec("fashion_mnist")
    source = datasets.load_source("fashion_mnist", spec.train_split)
    cpu = time.process_time()
    if source_kind == "memory":
        source = datasets.InMemorySource(source)
    decode_cpu_s = time.process_time() - cpu
    num_steps = max(2, 6144 // batch)
    batches = pipeline.train_batches(
        source,
        spec,
        seed=0,
        global_batch=batch,
        process_index=0,
        process_count=1,
        local_device_count=1,
        num_steps=num_steps + 1,
        image_size=image_size,
        prefetch_batches=0,
    )
    next(batches)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in batches:
        pass
    images = num_steps * batch
    return {
        "image_size": image_size,
        "batch": batch,
        "source": source_kind,
        "decode_once_cpu_s": decode_cpu_s,
        "cpu_s_per_epoch": (time.process_time() - cpu) / images * NUM_TRAIN,
        "wall_s_per_epoch": (time.perf_counter() - wall) / images * NUM_TRAIN,
    }


def vmap_worker(overrides: dict, seeds: int, steps: int) -> dict:
    import jax
    import numpy as np

    from bench import trainer_api
    from recipe.data import datasets, pipeline

    config = _config(overrides)
    setup = trainer_api.resolve.resolve(config, 1)
    states = [
        trainer_api.steps.TrainState.create(
            trainer_api.steps.init_variables(setup.model, setup.image_shape, seed),
            setup.optimizer.tx,
        )
        for seed in range(seeds)
    ]
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states)
    step_fn = functools.partial(
        trainer_api.steps.train_step,
        model=setup.model,
        tx=setup.optimizer.tx,
        label_smoothing=config.label_smoothing,
        skip_nonfinite=False,
        loss_penalty=setup.optimizer.loss_penalty,
    )
    runner = trainer_api.runners.pmap_runner()
    mapped = runner.map(jax.vmap(step_fn), donate_argnums=(0,))
    spec = datasets.get_dataset_spec("fashion_mnist")
    source = datasets.load_source("fashion_mnist", spec.train_split)
    host = next(
        pipeline.train_batches(
            source,
            spec,
            seed=0,
            global_batch=config.batch_size * seeds,
            process_index=0,
            process_count=1,
            local_device_count=1,
            num_steps=1,
            image_size=config.image_size,
        )
    )
    # Seed s trains on its own slice of the examples: (device, seed, batch, ...).
    batch = runner.put(
        {
            key: host[key].reshape(1, seeds, config.batch_size, *host[key].shape[2:])
            for key in ("image", "label")
        }
    )
    state = runner.place(stacked)
    cpu = time.process_time()
    state, metrics = mapped(state, batch)
    jax.block_until_ready(state)
    first_call_cpu_s = time.process_time() - cpu  # compile + one step
    for _ in range(2):  # warm up
        state, metrics = mapped(state, batch)
    jax.block_until_ready(state)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(steps):
        state, metrics = mapped(state, batch)
        if i % 8 == 7:  # bounded queue, as the trainer syncs
            jax.block_until_ready(metrics)
    jax.block_until_ready(state)
    return {
        "overrides": overrides,
        "seeds": seeds,
        "first_call_cpu_s": first_call_cpu_s,
        "cpu_s_per_step": (time.process_time() - cpu) / steps,
        "wall_s_per_step": (time.perf_counter() - wall) / steps,
    }


# ---------------------------------------------------------------------------------------------
# The driver.


def _argv(mode: str, **kwargs) -> list[str]:
    argv = ["-m", "bench.fashion_design", mode]
    for key, value in kwargs.items():
        if value is not None:
            text = value if isinstance(value, str) else json.dumps(value)
            argv += [f"--{key.replace('_', '-')}", text]
    return argv


def _pinned(argv: list[str], core: int | None, timeout: float) -> list[str]:
    prefix = ["taskset", "-c", str(core)] if core is not None else []
    return [*prefix, "timeout", "-s", "KILL", str(int(timeout)), common.PYTHON, *argv]


def _run(argv: list[str], core: int | None, timeout: float) -> dict:
    proc = subprocess.run(
        _pinned(argv, core, timeout),
        capture_output=True,
        text=True,
        env=common.worker_env(),
        cwd=common.ROOT,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"argv": argv, "failed": proc.returncode, "stderr": proc.stderr[-1500:]}
    return json.loads(lines[-1])


def _run_side_by_side(argvs: list[list[str]], timeout: float) -> list[dict]:
    """Runs workers at the same time, worker i pinned to core i."""
    procs = [
        subprocess.Popen(
            _pinned(argv, core, timeout),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=common.worker_env(),
            cwd=common.ROOT,
        )
        for core, argv in enumerate(argvs)
    ]
    results = []
    for proc, argv in zip(procs, argvs, strict=True):
        stdout, stderr = proc.communicate()
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            results.append({"argv": argv, "failed": proc.returncode, "stderr": stderr[-1500:]})
        else:
            results.append(json.loads(lines[-1]))
    return results


def _candidate(model: str, width: int, size: int, batch: int) -> dict:
    return {"model": model, "num_filters": width, "image_size": size, "batch_size": batch}


def measure_epochs(seconds: float) -> list[dict]:
    runs = [("memory", candidate) for candidate in EPOCH_GRID] + [
        ("tfds", candidate) for candidate in TFDS_SOURCE_GRID
    ]
    results = []
    for source, (model, width, size, batch) in runs:
        overrides = _candidate(model, width, size, batch)
        argv = _argv("epoch-worker", overrides=overrides, seconds=seconds, source=source)
        result = _run(argv, core=0, timeout=4 * seconds + 900)
        results.append(result)
        if "failed" in result:
            print(f"epoch {overrides}: FAILED\n{result['stderr']}", flush=True)
        else:
            print(
                f"epoch {model} w{width} {size}px batch {batch}, {source} source: "
                f"{result['cpu_s_per_epoch']:.0f} CPU s / {result['wall_s_per_epoch']:.0f} s "
                f"per epoch ({1e3 * result['cpu_s_per_step']:.1f} ms/step over "
                f"{result['timed_steps']} steps; first record after "
                f"{result['first_record_wall_s']:.0f} s)",
                flush=True,
            )
    return results


def measure_loader() -> list[dict]:
    results = []
    for source in ("tfds", "memory"):
        for size in (14, 28):
            argv = _argv("loader-worker", image_size=size, batch=1024, source=source)
            result = _run(argv, core=0, timeout=600)
            results.append(result)
            print(f"loader {size}px, {source} source: {result}", flush=True)
    return results


def measure_vmap(steps: int) -> list[dict]:
    results = []
    for size, batch in ((14, 32), (14, 1024)):
        overrides = _candidate("resnet8", 8, size, batch)

        def argv(seeds, overrides=overrides):
            return _argv("vmap-worker", overrides=overrides, seeds=seeds, steps=steps)

        for seeds in (1, 2, 4):
            result = _run(argv(seeds), core=0, timeout=900)
            result["setting"] = "one core"
            results.append(result)
            print(f"vmap one core {overrides} S={seeds}: {result}", flush=True)
        result = _run(argv(2), core=None, timeout=900)
        result["setting"] = "two cores, one process"
        results.append(result)
        print(f"vmap two cores, one process, S=2 {overrides}: {result}", flush=True)
        for result in _run_side_by_side([argv(1), argv(1)], timeout=900):
            result["setting"] = "two cores, two pinned processes"
            results.append(result)
            print(f"vmap two pinned processes, S=1 {overrides}: {result}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="all")
    parser.add_argument("--overrides", type=json.loads, default={})
    parser.add_argument("--seconds", type=json.loads, default=30)
    parser.add_argument("--source", choices=("memory", "tfds"), default="memory")
    parser.add_argument("--seeds", type=json.loads, default=1)
    parser.add_argument("--steps", type=json.loads, default=40)
    parser.add_argument("--image-size", type=json.loads, default=14)
    parser.add_argument("--batch", type=json.loads, default=1024)
    parser.add_argument("--only", choices=("epoch", "loader", "vmap"))
    parser.add_argument("--no-write", action="store_true", help=common.NO_WRITE_HELP)
    args = parser.parse_args()
    if args.mode == "epoch-worker":
        common.emit(epoch_worker(args.overrides, args.seconds, args.source))
        return
    if args.mode == "loader-worker":
        common.emit(loader_worker(args.image_size, args.batch, args.source))
        return
    if args.mode == "vmap-worker":
        common.emit(vmap_worker(args.overrides, args.seeds, args.steps))
        return
    out = {"machine": common.machine(), "seconds": args.seconds, "steps": args.steps}
    t0 = time.perf_counter()
    if args.only in (None, "loader"):
        out["loader"] = measure_loader()
    if args.only in (None, "epoch"):
        out["epoch"] = measure_epochs(args.seconds)
    if args.only in (None, "vmap"):
        out["vmap"] = measure_vmap(args.steps)
    out["elapsed_s"] = time.perf_counter() - t0
    print(f"total {out['elapsed_s']:.0f} s")
    if not args.no_write:
        path = (
            RESULTS_FILE
            if args.only is None
            else RESULTS_FILE.with_stem(f"fashion_design_{args.only}")
        )
        path.write_text(json.dumps(out, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
