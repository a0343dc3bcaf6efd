"""8. Goyal et al. at small scale on Fashion-MNIST (60,000 training images): Table 1 with the
zero-γ init, Figure 1's batch-size frontier (SGD with gradual warmup and the linear scaling rule,
then LARS with the MLPerf polynomial schedule past it), the gradient noise scale's prediction
of where it breaks (McCandlish et al. 2018), updates to a target training error against the
batch size (Shallue et al. 2018), and Figure 2's training-error curves.

Every run is the trainer's `train_and_evaluate` with config overrides of
configs/default.py (`SETTING`, then the run's own; the grid is
`bench/reproduce_fashion_design.py`'s, Table 1's rows `bench/table1.py`'s, shared with section
5). The noise scale B_simple is the trainer's own measurement (`noise_scale.enabled`: on one
device, the two halves of each batch), logged with every training record of the base runs.
After training, BN statistics are recomputed on 8,192 training images
(`bench.table1_run.precise_bn_test_error`) and the test error is measured with them. The
analysis, the figures and the section's text are `bench/reproduce_fashion_analysis.py`'s,
`_figures.py`'s and `_section.py`'s.

Two worker processes, each pinned to one core (`taskset`), take runs from one queue, longest
first; a worker runs many in turn, so the imports and the decoded dataset
(`data_in_memory`: decoded once per process) are paid once per worker, and XLA's persistent
compilation cache (one directory per reproduction) compiles the model's init and each step
once for all seeds.

    python -m bench.reproduce_fashion             # the whole grid: BENCHMARKS.md section 8 and
                                                  # bench/reproduce_fashion_*.png
    python -m bench.reproduce_fashion --seeds 1 --groups table1 --no-write   # a quick look
    python -m bench.reproduce_fashion --from-json bench/results/reproduce_fashion.json  # redraw

It needs Fashion-MNIST: `apt-get install dataset-fashion-mnist` (offline), or TFDS's own
download (see recipe/data/fashion_mnist.py). Run it on a quiet machine.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import queue
import subprocess
import sys
import threading
import time
import traceback

from bench import common, table1
from bench import reproduce_fashion_analysis as analysis_of
from bench import reproduce_fashion_design as design
from bench import reproduce_fashion_figures as figures
from bench import reproduce_fashion_section as section

RUNS_DIR = common.RESULTS / "reproduce_fashion_runs"  # work dirs (git-ignored)


# ---------------------------------------------------------------------------------------------
# One run, inside a worker process.


def run_one(job: table1.Run, workdir: pathlib.Path, setting: dict) -> dict:
    """Trains `job` on top of `setting` in `workdir`: its curve, noise scale, test errors (chance
    if the loss diverged) and CPU seconds."""
    from bench import table1_run, trainer_api
    from recipe.data import datasets

    overrides = {**setting, **job.overrides, "seed": job.seed}
    config = trainer_api.config_for(**overrides)
    result = {"group": job.group, "name": job.name, "seed": job.seed, "batch_size": job.batch}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        # About 16 training records per epoch (every step at the largest batches).
        table1_run.train(
            config, workdir, num_train=design.num_train(overrides), records_per_epoch=16
        )
    except trainer_api.NonFiniteLossError as error:
        result["diverged"] = str(error)
    result["train_seconds"] = time.perf_counter() - wall0
    records = table1_run.train_records(workdir)
    result["curve"] = [
        (r["epoch"], r["step"], 100 * (1 - r["accuracy"]), r["loss"], r["learning_rate"])
        for r in records
    ]
    result["noise_scale"] = [
        (r["epoch"], r["step"], r["noise_scale"]) for r in records if "noise_scale" in r
    ]
    result["peak_lr"] = max((r["learning_rate"] for r in records), default=float("nan"))
    if "diverged" in result:
        result["test_error_precise_bn"] = result["test_error_running_bn"] = design.CHANCE_ERROR
        result["final_train_error"] = design.CHANCE_ERROR
    else:
        spec = datasets.get_dataset_spec(config.dataset)
        sources = (
            datasets.load_in_memory(config.dataset, spec.train_split, config.data_dir),
            datasets.load_in_memory(config.dataset, spec.test_split, config.data_dir),
        )
        result.update(
            table1_run.precise_bn_test_error(config, workdir, sources, design.PRECISE_BN_EXAMPLES)
        )
        result["final_train_error"] = table1_run.last_epoch_mean(
            [(c[0], c[2]) for c in result["curve"]], config.num_epochs
        )
    result["cpu_seconds"] = time.process_time() - cpu0
    return result


def worker() -> None:
    """Reads one job per stdin line (JSON: the job, its work dir and the setting), runs it,
    answers one `RESULT {json}` line."""
    from bench import trainer_api

    for line in sys.stdin:
        spec = json.loads(line)
        overrides = table1.overrides_from_json(spec["overrides"])
        job = table1.Run(spec["group"], spec["name"], spec["seed"], overrides)
        setting = table1.overrides_from_json(spec["setting"])
        try:
            result = run_one(job, pathlib.Path(spec["workdir"]), setting)
        except trainer_api.preemption.Stopped:
            raise
        except Exception:  # noqa: BLE001  (reported with the run, the worker goes on)
            result = {**spec, "failed": traceback.format_exc()[-3000:]}
        print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The driver: two pinned workers, one queue.


def run_jobs(grid: list[table1.Run], parallel: int, timeout: float, log=print) -> list[dict]:
    todo: queue.Queue[table1.Run] = queue.Queue()
    for job in sorted(grid, key=design.queue_order):
        todo.put(job)
    results: list[dict] = []
    lock = threading.Lock()
    cache_dir = RUNS_DIR / "jax_cache"
    env = {
        **common.worker_env(),
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    deadline = time.monotonic() + timeout

    def start(core: int) -> subprocess.Popen:
        remaining = max(1, int(deadline - time.monotonic()))
        cmd = [
            "taskset", "-c", str(core), "timeout", "-s", "KILL", str(remaining),
            common.PYTHON, "-m", "bench.reproduce_fashion", "worker",
        ]  # fmt: skip
        log_file = open(RUNS_DIR / f"worker{core}.log", "a")  # noqa: SIM115  (closed with proc)
        return subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            env=env,
            cwd=common.ROOT,
        )

    def serve(core: int) -> None:
        proc = start(core)
        while True:
            try:
                job = todo.get_nowait()
            except queue.Empty:
                break
            spec = {
                **dataclasses.asdict(job),
                "workdir": str(RUNS_DIR / job.key),
                "setting": design.SETTING,
            }
            result = None
            try:
                proc.stdin.write(json.dumps(spec) + "\n")
                proc.stdin.flush()
                for line in proc.stdout:
                    if line.startswith("RESULT "):
                        result = json.loads(line[len("RESULT ") :])
                        break
            except BrokenPipeError:
                pass
            if result is None:  # the worker died (killed by the timeout, or crashed)
                result = {**spec, "failed": f"worker exited with {proc.wait()}"}
                if time.monotonic() < deadline:
                    proc = start(core)
            with lock:
                results.append(result)
                log(_line(result, len(results), len(grid)))
        proc.stdin.close()
        proc.wait()

    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    threads = [threading.Thread(target=serve, args=(core,)) for core in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _line(r: dict, done: int, total: int) -> str:
    head = f"[{done}/{total}] {r['group']:6s} {r['name']:16s} seed {r['seed']}"
    if "failed" in r:
        return f"{head}: FAILED\n{r['failed']}"
    if "diverged" in r:
        return f"{head}: diverged ({r['train_seconds']:.0f} s)"
    return (
        f"{head}: test error {r['test_error_precise_bn']:.2f}% (running-BN "
        f"{r['test_error_running_bn']:.2f}%), final train error {r['final_train_error']:.2f}%, "
        f"{r['train_seconds']:.0f} s"
    )


# ---------------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker()
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", default="table1,sweep,lars")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of Table 1's rows")
    parser.add_argument("--sweep-seeds", type=int, default=2, help="seeds per Figure 1 point")
    parser.add_argument("--sweep", default=",".join(map(str, design.SWEEP_BATCHES)))
    parser.add_argument("--lars", default=",".join(map(str, design.LARS_BATCHES)))
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=5400, help="seconds for the whole grid")
    parser.add_argument("--set", default="{}", help="JSON overrides of SETTING (exploration)")
    parser.add_argument("--no-write", action="store_true", help=common.NO_WRITE_HELP)
    parser.add_argument("--tag", help="also save the runs as bench/results/<tag>.json")
    parser.add_argument(
        "--from-json",
        type=pathlib.Path,
        help="redraw the figures and section 8 from a saved run (bench/results/...json)",
    )
    args = parser.parse_args()
    if args.from_json:
        out = json.loads(args.from_json.read_text())
        analysis = analysis_of.analyse(out)
        figures.plot_all(out, analysis)
        common.update_section(section.RESULTS_NAME, section.render(out, analysis))
        return
    design.SETTING.update(json.loads(args.set))
    _check_dataset()
    grid = design.jobs(
        tuple(args.groups.split(",")),
        args.seeds,
        args.sweep_seeds,
        tuple(int(b) for b in args.sweep.split(",") if b),
        tuple(int(b) for b in args.lars.split(",") if b),
    )
    machine = common.machine()
    print(f"{len(grid)} runs, {args.parallel} at a time; load average {machine['load_before']}")
    t0 = time.perf_counter()
    results = run_jobs(grid, args.parallel, args.timeout)
    out = {
        "setting": {**design.SETTING, "optimizer.base_batch_size": design.BASE_BATCH},
        "k": design.K,
        "results": results,
        "elapsed_s": time.perf_counter() - t0,
        "machine": machine,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    analysis = analysis_of.analyse(out)
    print(json.dumps({k: v for k, v in analysis.items() if k != "updates_to_target"}, default=str))
    print(f"total {out['elapsed_s']:.0f} s")
    if args.tag:
        path = common.RESULTS / f"{args.tag}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1, default=str))
    if not args.no_write:
        figures.plot_all(out, analysis)
        common.publish(section.RESULTS_NAME, out, section.render(out, analysis))
        paths = ", ".join(map(common.relative, figures.FIGURES.values()))
        print(f"wrote {paths} and section 8 of BENCHMARKS.md")


def _check_dataset() -> None:
    """Prepares fashion_mnist once before the workers start (they would race to), or exits
    with how to get it."""
    from recipe.data import datasets

    try:
        for split in ("train", "test"):
            datasets.load_source("fashion_mnist", split)
    except datasets.DatasetNotPreparedError as error:
        sys.exit(f"bench.reproduce_fashion needs Fashion-MNIST. {error}")


if __name__ == "__main__":
    sys.exit(main())
