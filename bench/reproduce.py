"""5. Goyal et al. Table 1 (and the Table 2 zero-γ ablation) at small scale, on the embedded
MNIST-5k, with Figure 2-style training-error curves.

Table 1's rows and setting are `bench/table1.py`'s, shared with the Fashion-MNIST
reproduction; each row runs again with γ = 1 in every block's last BN (Table 2's ablation).
Every run is the trainer's `train_and_evaluate` with config overrides (configs/default.py is
the base); after training, BatchNorm statistics are recomputed over the whole training set and
the test error is measured with them (`bench/table1_run.py`). The curves are the
training-mode error the trainer logs (on augmented batches, averaged over each log interval).
The section's text is `bench/reproduce_section.py`'s, the figure `bench/reproduce_figure.py`'s.

Runs go two at a time, each pinned to one core (`taskset`), each under `timeout -s KILL`.

    python -m bench.reproduce                 # the whole table: writes BENCHMARKS.md section 5
                                              # and bench/reproduce_figure2.png
    python -m bench.reproduce --seeds 1 --rows 'base|no warmup' --no-write \
        --set '{"optimizer.base_lr": 0.2}' --tag explore/lr02  # exploring other settings
    python -m bench.reproduce run --name X --seed 0 --workdir D --overrides '{...}'  # one run
"""

import argparse
import concurrent.futures
import json
import pathlib
import subprocess
import sys
import time

from bench import common, reproduce_figure, reproduce_section, summary, table1

RESULTS = common.RESULTS
MNIST5K_TRAIN = 4000


def rows(k: int = table1.K, base_batch: int = table1.BASE_BATCH) -> dict[str, dict]:
    """Table 1's rows with the paper's zero-γ init, and the same rows with γ = 1 (Table 2 is the
    base and gradual-warmup pairs): name → overrides on top of `table1.SETTING`."""
    table = table1.rows(k, base_batch)
    gamma_one = {
        f"{name}, γ=1": {**overrides, "zero_init_last_bn": False}
        for name, overrides in table.items()
    }
    return {**table, **gamma_one}


ROWS = rows()


# ---------------------------------------------------------------------------------------------
# One run (a worker process).


def run_one(name: str, seed: int, workdir: pathlib.Path, overrides: dict) -> dict:
    """Trains row `name` (`overrides` on configs/default.py) with `seed` in `workdir`: its
    curve and test errors, also saved as `workdir`/result.json for the driver."""
    from bench import table1_run, trainer_api

    config = trainer_api.config_for(**{**overrides, "seed": seed})
    t0 = time.perf_counter()
    # About 8 training-error records per epoch (every step at large batches).
    table1_run.train(config, workdir, num_train=MNIST5K_TRAIN, records_per_epoch=8)
    train_s = time.perf_counter() - t0
    result = table1_run.precise_bn_test_error(config, workdir)
    records = table1_run.train_records(workdir)
    curve = [(r["epoch"], 100 * (1 - r["accuracy"]), r["loss"]) for r in records]
    result.update(
        name=name,
        seed=seed,
        batch_size=config.batch_size,
        train_seconds=train_s,
        final_train_error=table1_run.last_epoch_mean([c[:2] for c in curve], config.num_epochs),
        curve=curve,
        peak_lr=max(r["learning_rate"] for r in records),
    )
    (workdir / "result.json").write_text(json.dumps(result))
    return result


# ---------------------------------------------------------------------------------------------
# The driver.


def _worker(run: table1.Run, setting: dict, core: int, timeout: float) -> dict:
    workdir = RESULTS / "reproduce_runs" / run.key
    cmd = [
        "taskset", "-c", str(core),
        "timeout", "-s", "KILL", str(int(timeout)),
        common.PYTHON, "-m", "bench.reproduce", "run",
        "--name", run.name, "--seed", str(run.seed), "--workdir", str(workdir),
        "--overrides", json.dumps({**setting, **run.overrides}),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=common.worker_env(), cwd=common.ROOT
    )
    if proc.returncode != 0:
        return {
            "name": run.name,
            "seed": run.seed,
            "failed": proc.returncode,
            "stderr": proc.stderr[-2000:],
        }
    return json.loads((workdir / "result.json").read_text())


def run_grid(grid: list[table1.Run], setting: dict, parallel: int, timeout: float) -> list[dict]:
    """Runs `grid` `parallel` at a time, each worker pinned to a core of its own."""
    results = []
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        free = list(range(parallel))
        futures = {}
        for run in grid:
            if not free:
                done, _ = concurrent.futures.wait(futures, return_when="FIRST_COMPLETED")
                for f in done:
                    free.append(futures.pop(f))
                    results.append(f.result())
                    _log(results[-1])
            core = free.pop(0)
            futures[pool.submit(_worker, run, setting, core, timeout)] = core
        for f in concurrent.futures.as_completed(futures):
            results.append(f.result())
            _log(results[-1])
    return results


def _log(r: dict) -> None:
    if "failed" in r:
        print(f"  {r['name']} seed {r['seed']}: FAILED ({r['failed']})\n{r['stderr']}", flush=True)
    else:
        print(
            f"  {r['name']:22s} seed {r['seed']}: test error {r['test_error_precise_bn']:.2f}% "
            f"(running-BN {r['test_error_running_bn']:.2f}%), final train error "
            f"{r['final_train_error']:.2f}%, {r['train_seconds']:.0f} s",
            flush=True,
        )


def summarize(out: dict) -> None:
    for name, rs in table1.by_name(out["results"]).items():
        errs = [r["test_error_precise_bn"] for r in rs]
        mean, sd = table1.mean_sd(errs)
        print(f"{name:22s} {mean:6.2f} ± {sd:.2f}  {[round(e, 2) for e in errs]}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        parser = argparse.ArgumentParser()
        parser.add_argument("mode")
        parser.add_argument("--name", required=True)
        parser.add_argument("--seed", type=int, required=True)
        parser.add_argument("--workdir", required=True)
        parser.add_argument("--overrides", required=True)
        args = parser.parse_args()
        overrides = table1.overrides_from_json(json.loads(args.overrides))
        run_one(args.name, args.seed, pathlib.Path(args.workdir), overrides)
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", default="|".join(ROWS), help="row names, |-separated")
    parser.add_argument("--k", type=int, default=table1.K)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--set", default="{}", help="JSON overrides of SETTING (exploration)")
    parser.add_argument("--no-write", action="store_true", help=common.NO_WRITE_HELP)
    parser.add_argument("--tag", help="also save the runs as bench/results/<tag>.json")
    args = parser.parse_args()
    setting = {**table1.SETTING, **json.loads(args.set)}
    all_rows = rows(args.k)
    selected = {name: all_rows[name] for name in args.rows.split("|")}
    machine = common.machine()
    t0 = time.perf_counter()
    grid = table1.runs("table1", selected, args.seeds)
    results = run_grid(grid, setting, args.parallel, args.timeout)
    elapsed = time.perf_counter() - t0
    out = {
        "setting": setting,
        "k": args.k,
        "results": results,
        "elapsed_s": elapsed,
        "machine": machine,
    }
    if args.tag:
        path = RESULTS / f"{args.tag}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1, default=str))
    summarize(out)
    print(f"total {elapsed:.0f} s")
    if not args.no_write:
        reproduce_figure.plot(out, reproduce_figure.FIGURE)
        common.publish("reproduce", out, reproduce_section.render(out))
        common.update_section("summary", summary.summary())
        print(f"wrote {reproduce_figure.FIGURE} and section 5 of {common.BENCHMARKS_MD}")


if __name__ == "__main__":
    sys.exit(main())
