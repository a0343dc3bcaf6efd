"""5. Goyal et al. Table 1 (and the Table 2 zero-γ ablation) at small scale, on the embedded
MNIST-5k, with Figure 2-style training-error curves.

Every run is `train.loop.train_and_evaluate` with config overrides
(configs/default.py is the base). After training, BatchNorm statistics are recomputed
over the training set ("precise BN": the mean of per-batch means and variances, batches the
size of one device's training batch, no augmentation) and the test error is measured with
them: BN running averages lag when an epoch has few steps at a high learning rate, which would
blur the comparison. The curves are the training-mode error the trainer logs (on augmented
batches, averaged over each log interval).

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
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

from bench import common

RESULTS = common.RESULTS
FIGURE = common.BENCH / "reproduce_figure2.png"

# The small-scale setting (see BENCHMARKS.md section 5 for why these values).
BASE_BATCH = 32
K = 8
SETTING = {
    "model": "resnet8",
    "num_filters": 8,
    "image_size": 14,
    "num_epochs": 12,
    "eval_batch_size": 1000,
    # kη = 3.2, the paper's 8k learning rate (η is per 32 examples here, not per 256).
    "optimizer.base_lr": 0.4,
    "optimizer.base_batch_size": BASE_BATCH,
    "optimizer.warmup_epochs": 2.0,
    "optimizer.decay": "step",
    "optimizer.decay_epochs": (8, 11),
    "label_smoothing": 0.1,
    "zero_init_last_bn": True,
    # Goyal §2.3: BN statistics over n = 32 examples whatever the batch (one device here).
    "bn.scope": "ghost",
    "bn.ghost_batch_size": BASE_BATCH,
    "checkpoint_every_steps": 100_000,
    "keep_checkpoints": 1,
    "progress_bar": False,
}


def rows(k: int = K, base_batch: int = BASE_BATCH) -> dict[str, dict]:
    """Table 1's rows with the paper's zero-γ init, and the same rows with γ = 1 (Table 2 is the
    base and gradual-warmup pairs): name → overrides on top of SETTING."""
    table1 = {
        "base": {"batch_size": base_batch, "optimizer.warmup": "none"},
        "no warmup": {"batch_size": base_batch * k, "optimizer.warmup": "none"},
        "constant warmup": {"batch_size": base_batch * k, "optimizer.warmup": "constant"},
        "gradual warmup": {"batch_size": base_batch * k, "optimizer.warmup": "gradual"},
    }
    gamma_one = {
        f"{name}, γ=1": {**overrides, "zero_init_last_bn": False}
        for name, overrides in table1.items()
    }
    return {**table1, **gamma_one}


ROWS = rows()


# ---------------------------------------------------------------------------------------------
# One run (a worker process).


def _config(overrides: dict):
    from bench import jax_steps

    return jax_steps.config_for(**overrides)


def precise_bn_test_error(
    config, workdir: pathlib.Path, sources: tuple | None = None, max_examples: int | None = None
) -> dict:
    """Test error of the final checkpoint with BN statistics recomputed on the training set
    (its first `max_examples`, in whole batches of the run's size, at least one; all of it by
    default). `sources`: the (train, test) sources to read, by default `load_source`'s."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from recipe.data import datasets, pipeline
    from train import checkpoints, resolve

    setup = resolve.resolve(config, 1)
    step, state = checkpoints.restore_checkpoint(setup, str(workdir))
    model, spec = setup.model, setup.spec
    momentum = config.bn.momentum

    @jax.jit
    def batch_statistics(params, images):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, state.batch_stats)
        _, new = model.apply(
            {"params": params, "batch_stats": zeros}, images, train=True, mutable=["batch_stats"]
        )
        return jax.tree_util.tree_map(lambda x: x / (1 - momentum), new["batch_stats"])

    @jax.jit
    def predictions(params, batch_stats, images):
        logits = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
        return jnp.argmax(logits, -1)

    train_source, test_source = sources or (
        datasets.load_source(config.dataset, spec.train_split, config.data_dir),
        datasets.load_source(config.dataset, spec.test_split, config.data_dir),
    )
    layout = dict(process_index=0, process_count=1, local_device_count=1)
    bn_batch = config.batch_size
    num_batches = pipeline.steps_per_epoch(len(train_source), bn_batch)
    if max_examples is not None:
        num_batches = max(1, min(num_batches, max_examples // bn_batch))
    sums = None
    for batch in pipeline.train_batches(
        train_source,
        spec,
        seed=config.seed,
        global_batch=bn_batch,
        num_steps=num_batches,
        augment=False,
        image_size=config.image_size,
        **layout,
    ):
        stats = batch_statistics(state.params, batch["image"][0])
        sums = stats if sums is None else jax.tree_util.tree_map(jnp.add, sums, stats)
    batch_stats = jax.tree_util.tree_map(lambda x: x / num_batches, sums)

    def error(stats) -> float:
        wrong = count = 0
        for batch in pipeline.eval_batches(
            test_source,
            spec,
            global_batch=config.eval_batch_size,
            image_size=config.image_size,
            **layout,
        ):
            pred = np.asarray(predictions(state.params, stats, batch["image"][0]))
            mask = batch["mask"][0] > 0
            wrong += int(np.sum((pred != batch["label"][0]) & mask))
            count += int(mask.sum())
        return 100.0 * wrong / count

    kernels = [x for path, x in jax.tree_util.tree_leaves_with_path(state.params) if x.ndim == 4]
    return {
        "step": step,
        # BN makes every conv scale-invariant: its effective learning rate is η / ‖W‖².
        "conv_weight_norm": float(jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in kernels))),
        "test_error_precise_bn": error(batch_stats),
        "test_error_running_bn": error(state.batch_stats),
    }


def run_one(name: str, seed: int, workdir: pathlib.Path, overrides: dict) -> dict:
    from train import loop
    from train.metrics import read_metrics

    config = _config({**overrides, "seed": seed})
    steps_per_epoch = 4000 // config.batch_size
    # About 8 training-error records per epoch (every step at large batches).
    config.log_every_steps = max(1, steps_per_epoch // 8)
    config.eval_every_epochs = config.num_epochs  # the trainer's running-BN eval, once
    if workdir.exists():
        shutil.rmtree(workdir)
    t0 = time.perf_counter()
    loop.train_and_evaluate(config, str(workdir))
    train_s = time.perf_counter() - t0
    result = precise_bn_test_error(config, workdir)
    records = [r for r in read_metrics(workdir) if r["kind"] == "train"]
    curve = [(r["epoch"], 100 * (1 - r["accuracy"]), r["loss"]) for r in records]
    last_epoch = [c for c in curve if c[0] > config.num_epochs - 1]
    result.update(
        name=name,
        seed=seed,
        batch_size=config.batch_size,
        train_seconds=train_s,
        final_train_error=statistics.mean(c[1] for c in last_epoch),
        curve=curve,
        peak_lr=max(r["learning_rate"] for r in records),
    )
    (workdir / "result.json").write_text(json.dumps(result))
    return result


# ---------------------------------------------------------------------------------------------
# The driver.


def _worker(name: str, seed: int, overrides: dict, core: int, timeout: float) -> dict:
    workdir = RESULTS / "reproduce_runs" / f"{name.replace(' ', '_').replace(',', '')}_s{seed}"
    cmd = [
        "taskset", "-c", str(core),
        "timeout", "-s", "KILL", str(int(timeout)),
        common.PYTHON, "-m", "bench.reproduce", "run",
        "--name", name, "--seed", str(seed), "--workdir", str(workdir),
        "--overrides", json.dumps(overrides),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(common.ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=common.ROOT)
    if proc.returncode != 0:
        return {
            "name": name,
            "seed": seed,
            "failed": proc.returncode,
            "stderr": proc.stderr[-2000:],
        }
    return json.loads((workdir / "result.json").read_text())


def run_grid(row_overrides: dict, seeds: list[int], setting: dict, parallel: int, timeout: float):
    jobs = [(name, seed) for seed in seeds for name in row_overrides]
    cores = list(range(parallel))
    results = []
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        free = list(cores)
        futures = {}
        for name, seed in jobs:
            if not free:
                done, _ = concurrent.futures.wait(futures, return_when="FIRST_COMPLETED")
                for f in done:
                    free.append(futures.pop(f))
                    results.append(f.result())
                    _log(results[-1])
            core = free.pop(0)
            overrides = {**setting, **row_overrides[name]}
            futures[pool.submit(_worker, name, seed, overrides, core, timeout)] = core
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


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        parser = argparse.ArgumentParser()
        parser.add_argument("mode")
        parser.add_argument("--name", required=True)
        parser.add_argument("--seed", type=int, required=True)
        parser.add_argument("--workdir", required=True)
        parser.add_argument("--overrides", required=True)
        args = parser.parse_args()
        overrides = json.loads(args.overrides)
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        run_one(args.name, args.seed, pathlib.Path(args.workdir), overrides)
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", default="|".join(ROWS), help="row names, |-separated")
    parser.add_argument("--k", type=int, default=K)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--set", default="{}", help="JSON overrides of SETTING (exploration)")
    parser.add_argument("--no-write", action="store_true", help=common.NO_WRITE_HELP)
    parser.add_argument("--tag", help="also save the runs as bench/results/<tag>.json")
    args = parser.parse_args()
    setting = {**SETTING, **json.loads(args.set)}
    all_rows = rows(args.k)
    selected = {name: all_rows[name] for name in args.rows.split("|")}
    machine = common.machine()
    t0 = time.perf_counter()
    results = run_grid(selected, list(range(args.seeds)), setting, args.parallel, args.timeout)
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
        plot(out, FIGURE)
        common.publish("reproduce", out, render(out))
        from bench import run_all

        common.update_section("summary", run_all.summary())
        print(f"wrote {FIGURE} and section 5 of {common.BENCHMARKS_MD}")


PAPER = {  # Goyal et al. 2017, Tables 1 and 2 (ImageNet top-1 error %, kn = 256 vs 8k)
    "base": "23.60 ± 0.12",
    "no warmup": "24.84 ± 0.37",
    "constant warmup": "25.88 ± 0.56",
    "gradual warmup": "23.74 ± 0.09",
    "base, γ=1": "23.84",
    "gradual warmup, γ=1": "24.11",
}


def _by_row(out: dict) -> dict[str, list[dict]]:
    by_row: dict[str, list[dict]] = {}
    for r in out["results"]:
        if "failed" not in r:
            by_row.setdefault(r["name"], []).append(r)
    return by_row


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(out: dict) -> None:
    for name, rs in _by_row(out).items():
        errs = [r["test_error_precise_bn"] for r in rs]
        mean, sd = _mean_sd(errs)
        print(f"{name:22s} {mean:6.2f} ± {sd:.2f}  {[round(e, 2) for e in errs]}")


def plot(out: dict, path: pathlib.Path) -> None:
    """Figure 2 of the paper: training error vs epochs, each large-batch warmup against the
    base batch (mean over seeds, shaded min–max), plus the zero-γ ablation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    by_row = _by_row(out)
    epochs = out["setting"]["num_epochs"]
    grid = np.linspace(0, epochs, 200)

    def band(name):
        curves = []
        for r in by_row.get(name, []):
            e = np.array([c[0] for c in r["curve"]])
            err = np.array([c[1] for c in r["curve"]])
            curves.append(np.interp(grid, e, err, left=np.nan))
        if not curves:
            return None
        a = np.array(curves)
        return a.mean(0), a.min(0), a.max(0)

    k, n = out["k"], out["setting"]["optimizer.base_batch_size"]
    warmups = ("no warmup", "constant warmup", "gradual warmup")
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), sharey=True, sharex=True)
    for row, suffix in enumerate(("", ", γ=1")):
        for col, warmup in enumerate(warmups):
            ax = axes[row, col]
            for name, color in (("base" + suffix, "tab:blue"), (warmup + suffix, "tab:red")):
                b = band(name)
                if b is None:
                    continue
                batch = n if name.startswith("base") else n * k
                ax.plot(grid, b[0], color=color, label=f"kn={batch}, {name}")
                ax.fill_between(grid, b[1], b[2], color=color, alpha=0.2)
            ax.set_title(f"{warmup}, " + ("γ = 0 in last BN (Goyal)" if not suffix else "γ = 1"))
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
            ax.legend(loc="upper right")
            if row == 1:
                ax.set_xlabel("epoch")
        axes[row, 0].set_ylabel("training error %")
    fig.suptitle(
        f"Small-scale Figure 2: MNIST-5k, {out['setting']['model']} width "
        f"{out['setting']['num_filters']}, kn = {n * k} vs {n} (k = {k}); training-mode error on "
        f"augmented batches, mean of {len(by_row.get('base', []))} seeds, shaded min–max"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def render(out: dict) -> str:
    by_row = _by_row(out)
    s, k = out["setting"], out["k"]
    n = s["optimizer.base_batch_size"]
    lr = s["optimizer.base_lr"]
    m = out.get("machine", {})

    def cell(name):
        rs = by_row.get(name, [])
        if not rs:
            return ["–", "–", "–"]
        mean, sd = _mean_sd([r["test_error_precise_bn"] for r in rs])
        train, _ = _mean_sd([r["final_train_error"] for r in rs])
        per_seed = ", ".join(f"{r['test_error_precise_bn']:.1f}" for r in rs)
        return [f"**{mean:.2f} ± {sd:.2f}**", per_seed, f"{train:.2f}"]

    rows = []
    for name in ("base", "no warmup", "constant warmup", "gradual warmup"):
        batch = n if name == "base" else n * k
        rows.append(
            [f"kn = {batch}, η = {lr * batch / n:g}, {name}"]
            + cell(name)
            + cell(f"{name}, γ=1")
            + [PAPER[name]]
        )
    zero_rows = []
    for name in ("base", "gradual warmup"):
        one, zero = cell(f"{name}, γ=1")[0], cell(name)[0]
        batch = n if name == "base" else n * k
        zero_rows.append([f"kn = {batch}, {name}", one, zero, PAPER[f"{name}, γ=1"] + " vs " +
                          PAPER[name].split(" ")[0]])  # fmt: skip
    norms = []
    for name in ("no warmup", "constant warmup", "gradual warmup"):
        for suffix in ("", ", γ=1"):
            rs = by_row.get(name + suffix, [])
            if rs and "conv_weight_norm" in rs[0]:
                norms.append(
                    f"{name}{suffix}: {_mean_sd([r['conv_weight_norm'] for r in rs])[0]:.1f}"
                )
    minutes = out["elapsed_s"] / 60
    bn_gap = max(
        (abs(r["test_error_precise_bn"] - r["test_error_running_bn"]) for rs in by_row.values()
         for r in rs),
        default=0.0,
    )  # fmt: skip
    decay_epochs = ", ".join(map(str, s["optimizer.decay_epochs"]))
    lines = [
        "## 5. Goyal et al. Table 1 at small scale (`make reproduce`)",
        "",
        "Re-run: `make reproduce` (or `.venv/bin/python -m bench.reproduce`): "
        f"{len(out['results'])} training runs, two at a time, each pinned to one core; this run "
        f"took **{minutes:.1f} min** on {m.get('cpu', '?')} ({m.get('cores', '?')} cores), "
        f"{m.get('date', '?')}, load average {m.get('load_before', '?')} at the start.",
        "",
        f"Setting: MNIST-5k (4,000 train / 1,000 test, embedded), {s['model']} width "
        f"{s['num_filters']} on {s['image_size']}×{s['image_size']} inputs, {s['num_epochs']} "
        f"epochs, Nesterov SGD, weight decay 1e-4 off BN, label smoothing "
        f"{s['label_smoothing']}, step decay ÷10 at epochs {decay_epochs}, "
        f"warmup {s['optimizer.warmup_epochs']:g} epochs, BN statistics over ghost batches of "
        f"{s.get('bn.ghost_batch_size', n)} (Goyal §2.3: n = 32 per worker whatever kn), γ = 0 "
        f"in each block's last BN (= 1 in the γ = 1 rows). Base batch n = {n}, η = {lr}; "
        f"large batch kn = {n * k} "
        f"(k = {k}), η = {lr * k:g} by the linear scaling rule. Each run is "
        "`train.loop.train_and_evaluate` with config overrides (`bench/reproduce.py`); test "
        "error is measured after recomputing BN statistics on the training set (mean of "
        "per-batch statistics). At the end of these runs (after the lr decays) it matters "
        f"little: the trainer's running-average BN statistics give test errors within "
        f"{bn_gap:.1f} pp of these (every run's both numbers are in "
        "`bench/results/reproduce.json`).",
        "",
        f"**Table 1** (test error %, mean ± std over {len(by_row.get('base', []))} seeds, with "
        "the paper's zero-γ init and again with γ = 1; 'train' is the training-mode error of "
        "the last epoch; the paper's ImageNet numbers for kn = 256 vs 8k beside them for the "
        "shape):",
        "",
        common.md_table(
            [
                "",
                "γ = 0: test error",
                "per seed",
                "train",
                "γ = 1: test error",
                "per seed",
                "train",
                "paper (ImageNet, γ = 0)",
            ],
            rows,
        ),
        "",
        "**Table 2, zero-γ ablation** (test error %, γ = 1 vs γ = 0 in each block's last BN):",
        "",
        common.md_table(["", "γ = 1", "γ = 0 (Goyal)", "paper γ = 1 vs γ = 0"], zero_rows),
        "",
        "Norm of all conv kernels at the end (mean over seeds; with BN every conv is "
        "scale-invariant, so its effective learning rate is η/‖W‖²): " + "; ".join(norms) + ".",
        "",
        f"![Figure 2 at small scale]({path_rel(FIGURE)})",
        "",
        "Training error (training-mode forward pass on augmented batches, as the trainer logs "
        "it, mean over seeds with the min–max band), each large-batch warmup against the base "
        "batch, as in the paper's Figure 2; top row with the paper's zero-γ init, bottom row "
        "with γ = 1.",
    ]
    return "\n".join(lines)


def path_rel(path: pathlib.Path) -> str:
    return str(path.relative_to(common.ROOT))


if __name__ == "__main__":
    sys.exit(main())
