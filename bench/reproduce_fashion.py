"""8. Goyal et al. at small scale on Fashion-MNIST (60,000 training images): Table 1 with the
zero-γ init, Figure 1's batch-size frontier (SGD with gradual warmup and the linear scaling rule,
then LARS with the MLPerf polynomial schedule past it), the gradient noise scale's prediction
of where it breaks (McCandlish et al. 2018), updates to a target training error against the
batch size (Shallue et al. 2018), and Figure 2's training-error curves.

Every run is `train.loop.train_and_evaluate` with config overrides of
configs/default.py (`SETTING`, then the run's own). The noise scale B_simple is the
trainer's own measurement (`noise_scale.enabled`: on one device, the two halves of each batch),
logged with every training record of the base runs. After training, BN statistics are
recomputed on 8,192 training images (`bench.reproduce.precise_bn_test_error`) and the test
error is measured with them.

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
import math
import os
import pathlib
import queue
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback

from bench import common, reproduce

RESULTS_NAME = "reproduce_fashion"
RUNS_DIR = common.RESULTS / "reproduce_fashion_runs"  # work dirs (git-ignored)
FIGURES = {
    name: common.BENCH / f"reproduce_fashion_{name}.png" for name in ("figure1", "figure2", "steps")
}
BASE_BATCH = 32
K = 8  # Table 1: kn = 256
# Figure 1's sweep with gradual warmup (besides Table 1's base and gradual rows), and LARS.
SWEEP_BATCHES = (64, 128, 512, 1024, 2048, 4096, 8192)
LARS_BATCHES = (1024, 2048, 4096, 8192)
TOLERANCE_PP = 0.5  # kn*: the largest kn within this many points of the base's test error
PRECISE_BN_EXAMPLES = 8192
CHANCE_ERROR = 90.0  # ten classes: a diverged run counts as chance

# bench.reproduce's setting (resnet8 width 8 on 14×14, η = 0.4 per 32 examples so that kη at
# kn = 256 is the paper's 8k learning rate 3.2, label smoothing, zero-γ, BN over ghost batches
# of 32), on the whole 60,000-image training set for 3 epochs: warmup 0.5 epochs and the step
# decays at 2 and 2.75 keep §5's proportions (2, 8 and 11 of 12 epochs).
SETTING = {
    **reproduce.SETTING,
    "dataset": "fashion_mnist",
    "data_in_memory": True,
    "num_epochs": 3,
    "optimizer.warmup_epochs": 0.5,
    "optimizer.decay_epochs": (2.0, 2.75),
    "on_nonfinite": "stop",
    # BN statistics are recomputed here, on 8,192 images (`PRECISE_BN_EXAMPLES`), as in the
    # measured run, which predates the trainer's own precise BN.
    "bn.precise_batches": 0,
}
# LARS as the MLPerf ResNet-50 reference below 16k (configs/mlperf_lars.py): trust
# coefficient 0.001, peak lr 10 whatever the batch, polynomial decay of power 2 to 1e-4, BN and
# biases neither decayed nor trust-scaled; the same warmup and epochs as the SGD runs.
LARS = {
    "optimizer.name": "lars",
    "optimizer.trust_coefficient": 0.001,
    "optimizer.decay": "poly",
    "optimizer.decay_epochs": None,
    "optimizer.poly_power": 2.0,
    "optimizer.poly_end_lr": 1e-4,
    "optimizer.decay_bias": False,
    "optimizer.warmup": "gradual",
}
LARS_PEAK_LR = 10.0


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run: its group ('table1', 'sweep' or 'lars'), row name, seed, overrides."""

    group: str
    name: str
    seed: int
    overrides: dict

    @property
    def batch(self) -> int:
        return self.overrides["batch_size"]

    @property
    def key(self) -> str:
        return f"{self.group}_{self.name.replace(' ', '_')}_s{self.seed}"


def table1_rows(k: int = K, base_batch: int = BASE_BATCH) -> dict[str, dict]:
    """Table 1's rows: name → overrides. The base measures the noise scale."""
    large = base_batch * k
    return {
        "base": {"batch_size": base_batch, "optimizer.warmup": "none", "noise_scale.enabled": True},
        "no warmup": {"batch_size": large, "optimizer.warmup": "none"},
        "constant warmup": {"batch_size": large, "optimizer.warmup": "constant"},
        "gradual warmup": {"batch_size": large, "optimizer.warmup": "gradual"},
    }


def jobs(
    groups: tuple[str, ...],
    table_seeds: int,
    sweep_seeds: int,
    sweep_batches: tuple[int, ...] = SWEEP_BATCHES,
    lars_batches: tuple[int, ...] = LARS_BATCHES,
) -> list[Job]:
    """The grid: Table 1's rows × `table_seeds`; Figure 1's other batch sizes (gradual warmup)
    and LARS × `sweep_seeds`."""
    grid = []
    if "table1" in groups:
        for name, overrides in table1_rows().items():
            grid += [Job("table1", name, s, overrides) for s in range(table_seeds)]
    if "sweep" in groups:
        for batch in sweep_batches:
            overrides = {"batch_size": batch, "optimizer.warmup": "gradual"}
            grid += [Job("sweep", f"kn={batch}", s, overrides) for s in range(sweep_seeds)]
    if "lars" in groups:
        for batch in lars_batches:
            overrides = {
                **LARS,
                "batch_size": batch,
                "optimizer.base_lr": LARS_PEAK_LR,
                "optimizer.base_batch_size": batch,
            }
            grid += [Job("lars", f"LARS kn={batch}", s, overrides) for s in range(sweep_seeds)]
    return grid


def estimated_cost(job: Job) -> float:
    """Relative CPU cost of a run (bench/results/fashion_design.json: CPU s per epoch at 14×14
    is ~30 at batch 32, ~24 at 128–256, ~32 at 1024, ~43 at 4096–8192; the noise scale adds a
    backward pass)."""
    per_epoch = {32: 30, 64: 27, 128: 24, 256: 24, 512: 28, 1024: 32, 2048: 38}.get(job.batch, 43)
    return per_epoch * (1.6 if job.overrides.get("noise_scale.enabled") else 1.0)


def queue_order(job: Job) -> tuple:
    """Table 1 first, then the sweep's and LARS's first seed, then their second, …; the longest
    first within each: a grid cut short by its timeout keeps whole tables and one seed per
    point."""
    group = ("table1", "sweep", "lars").index(job.group)
    return (0 if job.group == "table1" else 1 + job.seed, group, -estimated_cost(job))


# ---------------------------------------------------------------------------------------------
# One run, inside a worker process.


def run_one(job: Job, workdir: pathlib.Path, setting: dict) -> dict:
    from bench import jax_steps
    from recipe.data import datasets
    from train import loop
    from train.metrics import read_metrics

    overrides = {**setting, **job.overrides, "seed": job.seed}
    config = jax_steps.config_for(**overrides)
    steps_per_epoch = _num_train(overrides) // config.batch_size
    # About 16 training records per epoch (every step at the largest batches).
    config.log_every_steps = max(1, steps_per_epoch // 16)
    config.eval_every_epochs = config.num_epochs  # the trainer's running-BN eval, once
    if workdir.exists():
        shutil.rmtree(workdir)
    result = {"group": job.group, "name": job.name, "seed": job.seed, "batch_size": job.batch}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        loop.train_and_evaluate(config, str(workdir))
    except loop.NonFiniteLossError as error:
        result["diverged"] = str(error)
    result["train_seconds"] = time.perf_counter() - wall0
    records = [r for r in read_metrics(workdir) if r["kind"] == "train"]
    result["curve"] = [
        (r["epoch"], r["step"], 100 * (1 - r["accuracy"]), r["loss"], r["learning_rate"])
        for r in records
    ]
    result["noise_scale"] = [
        (r["epoch"], r["step"], r["noise_scale"]) for r in records if "noise_scale" in r
    ]
    result["peak_lr"] = max((r["learning_rate"] for r in records), default=float("nan"))
    if "diverged" in result:
        result["test_error_precise_bn"] = result["test_error_running_bn"] = CHANCE_ERROR
        result["final_train_error"] = CHANCE_ERROR
    else:
        spec = datasets.get_dataset_spec(config.dataset)
        sources = (
            datasets.load_in_memory(config.dataset, spec.train_split, config.data_dir),
            datasets.load_in_memory(config.dataset, spec.test_split, config.data_dir),
        )
        result.update(
            reproduce.precise_bn_test_error(config, workdir, sources, PRECISE_BN_EXAMPLES)
        )
        last_epoch = [c[2] for c in result["curve"] if c[0] > config.num_epochs - 1]
        result["final_train_error"] = statistics.mean(last_epoch)
    result["cpu_seconds"] = time.process_time() - cpu0
    return result


def _tuples(values: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def worker() -> None:
    """Reads one job per stdin line (JSON: the job, its work dir and the setting), runs it,
    answers one `RESULT {json}` line."""
    from train import preemption

    for line in sys.stdin:
        spec = json.loads(line)
        job = Job(spec["group"], spec["name"], spec["seed"], _tuples(spec["overrides"]))
        try:
            result = run_one(job, pathlib.Path(spec["workdir"]), _tuples(spec["setting"]))
        except preemption.Stopped:
            raise
        except Exception:  # noqa: BLE001  (reported with the run, the worker goes on)
            result = {**spec, "failed": traceback.format_exc()[-3000:]}
        print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The driver: two pinned workers, one queue.


def run_jobs(grid: list[Job], parallel: int, timeout: float, log=print) -> list[dict]:
    todo: queue.Queue[Job] = queue.Queue()
    for job in sorted(grid, key=queue_order):
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
                "setting": SETTING,
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
# Analysis (pure functions of the results).


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def completed(results: list[dict]) -> list[dict]:
    return [r for r in results if "failed" not in r]


def errors_by_batch(results: list[dict], group: str) -> dict[int, list[float]]:
    """Test errors (precise BN; chance for a diverged run) per batch size of a sweep: 'sgd' is
    Table 1's base and gradual rows plus the gradual sweep, 'lars' the LARS runs."""
    by_batch: dict[int, list[float]] = {}
    for r in completed(results):
        if group == "sgd":
            keep = r["group"] == "sweep" or (
                r["group"] == "table1" and r["name"] in ("base", "gradual warmup")
            )
        else:
            keep = r["group"] == group
        if keep:
            by_batch.setdefault(r["batch_size"], []).append(r["test_error_precise_bn"])
    return dict(sorted(by_batch.items()))


def frontier(errors: dict[int, list[float]], base_batch: int, tolerance: float) -> int:
    """kn*: the largest batch size such that it and every smaller one in the sweep have a mean
    test error within `tolerance` points of the base batch's.

    >>> frontier({32: [10.0], 64: [10.3], 128: [10.6], 256: [10.2]}, 32, 0.5)
    64
    """
    limit = statistics.mean(errors[base_batch]) + tolerance
    best = base_batch
    for batch in sorted(b for b in errors if b > base_batch):
        if statistics.mean(errors[batch]) > limit:
            break
        best = batch
    return best


def steps_to_target(curve: list, target: float) -> int | None:
    """The first logged step whose training error (each record's mean over its log interval)
    is at or below `target` %, or None if the run never gets there."""
    for _epoch, step, error, *_ in curve:
        if error <= target:
            return step
    return None


def fit_s_min(batches: list[float], steps: list[float], b_noise: float) -> float:
    """S_min of S = S_min (1 + B_noise / B) with B_noise given: least squares in log S.

    >>> fit_s_min([10, 100], [1100, 200], 100.0)
    100.0
    """
    logs = [math.log(s / (1 + b_noise / b)) for b, s in zip(batches, steps, strict=True)]
    return math.exp(statistics.mean(logs))


def fit_noise_scale(batches: list[float], steps: list[float]) -> tuple[float, float]:
    """(S_min, B_noise) of S = S_min (1 + B_noise / B) fitted to measured (B, S), least squares
    in log S over a log-spaced grid of B_noise (S_min in closed form for each)."""
    best = None
    for i in range(401):
        b_noise = 10 ** (-1 + 7 * i / 400)  # 0.1 … 10⁶
        s_min = fit_s_min(batches, steps, b_noise)
        loss = sum(
            (math.log(s) - math.log(s_min * (1 + b_noise / b))) ** 2
            for b, s in zip(batches, steps, strict=True)
        )
        if best is None or loss < best[0]:
            best = (loss, s_min, b_noise)
    return best[1], best[2]


def noise_scale_summary(results: list[dict], first: float, last: float) -> dict:
    """B_simple of the base runs averaged over epochs [first, last] (mean ± std over seeds),
    and its range there."""
    per_seed, values = [], []
    for r in completed(results):
        if r["group"] == "table1" and r["name"] == "base" and r["noise_scale"]:
            window = [b for epoch, _, b in r["noise_scale"] if first <= epoch <= last]
            if window:
                per_seed.append(statistics.mean(window))
                values += window
    if not per_seed:
        return {}
    mean, sd = mean_sd(per_seed)
    return {
        "mean": mean,
        "sd": sd,
        "min": min(values),
        "max": max(values),
        "per_seed": per_seed,
        "epochs": (first, last),
    }


def updates_to_target(results: list[dict], target: float) -> dict[str, dict[int, list]]:
    """{'sgd' | 'lars': {batch: [steps to `target` % training error, or None, per seed]}}."""
    out: dict[str, dict[int, list]] = {"sgd": {}, "lars": {}}
    for r in completed(results):
        if r["group"] == "lars":
            kind = "lars"
        elif r["group"] == "sweep" or r["name"] in ("base", "gradual warmup"):
            kind = "sgd"
        else:
            continue
        out[kind].setdefault(r["batch_size"], []).append(steps_to_target(r["curve"], target))
    return {kind: dict(sorted(v.items())) for kind, v in out.items()}


def analyse(out: dict) -> dict:
    """kn*, B_noise, the target and the steps to it, the S(B) fits: what the text and the
    figures show."""
    results = out["results"]
    setting = out["setting"]
    base = setting["optimizer.base_batch_size"]
    sgd = errors_by_batch(results, "sgd")
    lars = errors_by_batch(results, "lars")
    analysis: dict = {"sgd": sgd, "lars": lars}
    if base not in sgd:
        return analysis
    analysis["kn_star"] = frontier(sgd, base, TOLERANCE_PP)
    analysis["kn_star_1pp"] = frontier(sgd, base, 1.0)  # how much hangs on the tolerance
    first_decay = setting["optimizer.decay_epochs"][0]
    # The noise scale over the first epochs: from the end of its EMA's first ~100 steps to the
    # first decay.
    analysis["b_noise"] = noise_scale_summary(results, 0.1, first_decay)
    # The target: the base runs' mean training error at the first decay (reached at constant
    # lr), rounded up to a whole 0.5 %.
    base_runs = [r for r in completed(results) if r["group"] == "table1" and r["name"] == "base"]
    at_decay = [
        min((c for c in r["curve"] if c[0] <= first_decay), key=lambda c: first_decay - c[0])[2]
        for r in base_runs
    ]
    target = math.ceil(2 * statistics.mean(at_decay)) / 2
    analysis["target"] = target
    reached = updates_to_target(results, target)
    analysis["updates_to_target"] = reached
    points = {b: statistics.mean(s) for b, s in reached["sgd"].items() if s and None not in s}
    analysis["sgd_steps"] = points
    if len(points) >= 2 and analysis["b_noise"]:
        b_noise = analysis["b_noise"]["mean"]
        analysis["s_min_at_b_noise"] = fit_s_min(list(points), list(points.values()), b_noise)
        s_min, fitted = fit_noise_scale(list(points), list(points.values()))
        analysis["fit"] = {"s_min": s_min, "b_noise": fitted}
    return analysis


# ---------------------------------------------------------------------------------------------
# Figures.


def plot_all(out: dict, analysis: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_figure1(out, analysis, plt)
    plot_figure2(out, plt)
    plot_steps(out, analysis, plt)


def plot_figure1(out: dict, analysis: dict, plt) -> None:
    """Test error against kn (SGD + gradual warmup, LARS), B_noise and kn*; B_simple's
    trajectory on the base runs."""
    fig, (ax, ax_noise) = plt.subplots(1, 2, figsize=(14, 5.5))
    base = out["setting"]["optimizer.base_batch_size"]
    for kind, color, marker, label in (
        ("sgd", "tab:blue", "o", "SGD, gradual warmup, linear scaling"),
        ("lars", "tab:green", "s", f"LARS, peak lr {LARS_PEAK_LR:g}, poly(2)"),
    ):
        errors = analysis.get(kind, {})
        if not errors:
            continue
        batches = list(errors)
        means = [statistics.mean(e) for e in errors.values()]
        sds = [mean_sd(e)[1] for e in errors.values()]
        ax.errorbar(batches, means, yerr=sds, color=color, marker=marker, capsize=3, label=label)
        for b, e in errors.items():
            ax.scatter([b] * len(e), e, color=color, s=10, alpha=0.5)
    if base in analysis.get("sgd", {}):
        level = statistics.mean(analysis["sgd"][base])
        ax.axhspan(
            level,
            level + TOLERANCE_PP,
            color="tab:blue",
            alpha=0.12,
            label=f"base + {TOLERANCE_PP} pp",
        )
    if "kn_star" in analysis:
        ax.axvline(
            analysis["kn_star"], color="tab:blue", ls="--", label=f"kn* = {analysis['kn_star']}"
        )
    noise = analysis.get("b_noise") or {}
    if noise:
        ax.axvspan(noise["min"], noise["max"], color="tab:orange", alpha=0.12)
        ax.axvline(
            noise["mean"],
            color="tab:orange",
            label=f"B_noise = {noise['mean']:.0f} (base, epochs "
            f"{noise['epochs'][0]:g}–{noise['epochs'][1]:g}; band: its range)",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("mini-batch size kn")
    ax.set_ylabel("test error % (precise BN; diverged = 90)")
    ax.set_title(f"Figure 1 at small scale: Fashion-MNIST, {out['setting']['num_epochs']} epochs")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    for r in completed(out["results"]):
        if r["group"] == "table1" and r["name"] == "base" and r["noise_scale"]:
            epochs = [e for e, _, _ in r["noise_scale"]]
            ax_noise.plot(epochs, [b for _, _, b in r["noise_scale"]], label=f"seed {r['seed']}")
    if "kn_star" in analysis:
        ax_noise.axhline(analysis["kn_star"], color="tab:blue", ls="--", label="kn*")
    for epoch in out["setting"]["optimizer.decay_epochs"]:
        ax_noise.axvline(epoch, color="grey", ls=":")
    ax_noise.set_yscale("log")
    ax_noise.set_xlabel("epoch (dotted: lr ÷ 10)")
    ax_noise.set_ylabel("B_simple = tr(Σ)/|G|² (EMA over ~100 steps)")
    ax_noise.set_title(f"Gradient noise scale on the base runs (kn = {base})")
    ax_noise.grid(alpha=0.3, which="both")
    ax_noise.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGURES["figure1"], dpi=72)
    plt.close(fig)


def _band(runs: list[dict], grid):
    import numpy as np

    curves = [
        np.interp(grid, [c[0] for c in r["curve"]], [c[2] for c in r["curve"]], left=np.nan)
        for r in runs
        if r["curve"]
    ]
    if not curves:
        return None
    a = np.array(curves)
    return a.mean(0), a.min(0), a.max(0)


def plot_figure2(out: dict, plt) -> None:
    """Figure 2 of the paper: training error vs epochs of each large-batch warmup against the
    base (mean over seeds, min–max band)."""
    import numpy as np

    by_name: dict[str, list[dict]] = {}
    for r in completed(out["results"]):
        if r["group"] == "table1":
            by_name.setdefault(r["name"], []).append(r)
    grid = np.linspace(0, out["setting"]["num_epochs"], 300)
    n = out["setting"]["optimizer.base_batch_size"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, warmup in zip(axes, ("no warmup", "constant warmup", "gradual warmup"), strict=True):
        for name, color in (("base", "tab:blue"), (warmup, "tab:red")):
            band = _band(by_name.get(name, []), grid)
            if band is None:
                continue
            batch = n if name == "base" else n * out["k"]
            ax.plot(grid, band[0], color=color, label=f"kn = {batch}, {name}")
            ax.fill_between(grid, band[1], band[2], color=color, alpha=0.2)
        ax.set_title(warmup)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="upper right")
    axes[0].set_ylabel("training error %")
    fig.suptitle(
        f"Figure 2 at small scale: Fashion-MNIST, kn = {n * out['k']} vs {n}; training-mode error "
        "on augmented batches, mean over seeds, shaded min–max"
    )
    fig.tight_layout()
    fig.savefig(FIGURES["figure2"], dpi=72)
    plt.close(fig)


def plot_steps(out: dict, analysis: dict, plt) -> None:
    """Shallue et al.'s measurement: updates to a target training error against the batch,
    beside McCandlish et al.'s S = S_min (1 + B_noise / B)."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5.5))
    reached = analysis.get("updates_to_target", {})
    for kind, color, marker in (("sgd", "tab:blue", "o"), ("lars", "tab:green", "s")):
        label = "SGD + gradual warmup" if kind == "sgd" else "LARS"
        xs, ys, missed = [], [], []
        for batch, steps in reached.get(kind, {}).items():
            got = [s for s in steps if s is not None]
            if len(got) == len(steps):
                xs.append(batch)
                ys.append(statistics.mean(got))
            else:
                missed.append(batch)
        ax.plot(xs, ys, color=color, marker=marker, label=f"{label}: reached (mean over seeds)")
        if missed:
            total = [_updates(out["setting"], b) for b in missed]
            ax.scatter(
                missed,
                total,
                color=color,
                marker="^",
                facecolors="none",
                s=60,
                label=f"{label}: not reached by all seeds (at the run's length)",
            )
    noise = analysis.get("b_noise") or {}
    batches = np.geomspace(16, 16384, 200)
    if "s_min_at_b_noise" in analysis:
        s_min, b_noise = analysis["s_min_at_b_noise"], noise["mean"]
        ax.plot(
            batches,
            s_min * (1 + b_noise / batches),
            color="tab:orange",
            label=f"S_min (1 + B_noise/B), measured B_noise = {b_noise:.0f}, "
            f"S_min = {s_min:.0f} fitted",
        )
        ax.axvline(b_noise, color="tab:orange", ls=":")
    if "fit" in analysis:
        fit = analysis["fit"]
        ax.plot(
            batches,
            fit["s_min"] * (1 + fit["b_noise"] / batches),
            color="grey",
            ls="--",
            label=f"best fit: B_noise = {fit['b_noise']:.0f}, S_min = {fit['s_min']:.0f}",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("mini-batch size B")
    ax.set_ylabel(f"updates to {analysis.get('target', '?')}% training error")
    ax.set_title("Updates to a target training error (Shallue et al. 2018)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGURES["steps"], dpi=72)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# BENCHMARKS.md section 8.


def _cell(runs: list[dict]) -> list[str]:
    if not runs:
        return ["–", "–", "–"]
    mean, sd = mean_sd([r["test_error_precise_bn"] for r in runs])
    per_seed = ", ".join(
        "diverged" if "diverged" in r else f"{r['test_error_precise_bn']:.2f}" for r in runs
    )
    train = statistics.mean(r["final_train_error"] for r in runs)
    return [f"**{mean:.2f} ± {sd:.2f}**", per_seed, f"{train:.2f}"]


def _verdict(difference: float) -> str:
    return "within" if difference <= TOLERANCE_PP else "not within"


def render(out: dict, analysis: dict) -> str:
    s, k = out["setting"], out["k"]
    n, lr = s["optimizer.base_batch_size"], s["optimizer.base_lr"]
    m = out.get("machine", {})
    runs = completed(out["results"])
    table = {
        name: [r for r in runs if r["group"] == "table1" and r["name"] == name]
        for name in table1_rows()
    }
    rows = []
    for name, overrides in table1_rows(k, n).items():
        batch = overrides["batch_size"]
        rows.append(
            [f"kn = {batch}, η = {lr * batch / n:g}, {name}"]
            + _cell(table[name])
            + [reproduce.PAPER[name]]
        )
    means = {
        name: mean_sd([r["test_error_precise_bn"] for r in rs])[0]
        for name, rs in table.items()
        if rs
    }
    failed = [r for r in out["results"] if "failed" in r]
    sweep_rows = []
    for kind, errors in (
        ("SGD, gradual warmup", analysis.get("sgd", {})),
        ("LARS", analysis.get("lars", {})),
    ):
        for batch, errs in errors.items():
            mean, sd = mean_sd(errs)
            sweep_rows.append(
                [kind, batch, f"{mean:.2f} ± {sd:.2f}", ", ".join(f"{e:.2f}" for e in errs)]
            )
    noise = analysis.get("b_noise") or {}
    target = analysis.get("target")
    steps_rows = []
    for kind, by_batch in analysis.get("updates_to_target", {}).items():
        for batch, steps in by_batch.items():
            total = _updates(s, batch)
            shown = ", ".join("not reached" if x is None else str(x) for x in steps)
            steps_rows.append([kind.upper() if kind == "lars" else "SGD", batch, shown, total])
    lines = [
        "## 8. Goyal et al. on Fashion-MNIST: Table 1, Figure 1's frontier and the noise scale "
        "(`make reproduce-fashion`)",
        "",
        f"Re-run: `make reproduce-fashion` (or `.venv/bin/python -m bench.reproduce_fashion`): "
        f"{len(out['results'])} training runs by two worker processes, each pinned to one core; "
        f"this run took **{out['elapsed_s'] / 60:.1f} min** on {m.get('cpu', '?')} "
        f"({m.get('cores', '?')} cores), {m.get('date', '?')}, load average "
        f"{m.get('load_before', '?')} at the start and {out.get('load_after', '?')} at the end"
        + (
            f"; {len(failed)} runs failed (see `bench/results/{RESULTS_NAME}.json`)"
            if failed
            else ""
        )
        + ".",
        "",
        "Setting: Fashion-MNIST (Xiao et al. 2017), "
        + (
            "all 60,000 training images"
            if _num_train(s) == 60_000
            else f"the first {_num_train(s)} training images"
        )
        + " (held decoded in memory), the 10,000 test images; "
        f"{s['model']} width {s['num_filters']} on "
        f"{s['image_size']}×{s['image_size']} inputs, {s['num_epochs']} epochs, Nesterov SGD, "
        "weight decay 1e-4 off BN, label smoothing "
        f"{s['label_smoothing']}, step decay ÷10 at epochs "
        f"{', '.join(f'{e:g}' for e in s['optimizer.decay_epochs'])}, warmup "
        f"{s['optimizer.warmup_epochs']:g} epochs, BN statistics over ghost batches of "
        f"{s['bn.ghost_batch_size']} whatever kn (Goyal §2.3), γ = 0 in each block's last BN. "
        f"Base batch n = {n} with η = {lr} (no warmup); kn scales η linearly. The setting is §5's "
        "on a dataset 15× larger: the same model, η and k, and the same proportions of warmup "
        "and decays in the run. Test error after recomputing BN statistics on "
        f"{PRECISE_BN_EXAMPLES} training images (every run's running-BN error is in the JSON). "
        "A run whose loss became non-finite counts as 90% (chance).",
        "",
        f"**Table 1** (test error %, mean ± std over {len(table['base'])} seeds; 'train' is the "
        "training-mode error of the last epoch; the paper's ImageNet numbers, kn = 256 vs 8k, "
        "for the shape):",
        "",
        common.md_table(["", "test error", "per seed", "train", "paper (ImageNet)"], rows),
        "",
    ]
    if {"base", "gradual warmup", "no warmup", "constant warmup"} <= set(means):
        base = means["base"]
        lines += [
            f"Against the base: gradual warmup {means['gradual warmup'] - base:+.2f} pp "
            f"({_verdict(means['gradual warmup'] - base)} {TOLERANCE_PP} pp), no warmup "
            f"{means['no warmup'] - base:+.2f} pp, constant warmup "
            f"{means['constant warmup'] - base:+.2f} pp (the paper: +0.14, +1.24, +2.28).",
            "",
        ]
    lines += [
        f"![Figure 2 at small scale]({_rel(FIGURES['figure2'])})",
        "",
        "Training error (training-mode forward pass on augmented batches, as the trainer logs "
        "it; mean over seeds, min–max band), each large-batch warmup against the base, as in "
        "the paper's Figure 2.",
        "",
        "**Figure 1** (test error % against kn; SGD with gradual warmup and the linear scaling "
        f"rule, kn = {n} and {n * k} from Table 1; LARS as MLPerf's ResNet-50 reference below 16k: "
        f"trust coefficient 0.001, peak lr {LARS_PEAK_LR:g} at every kn, polynomial decay of "
        "power 2 to 1e-4 after the same warmup, BN and biases neither decayed nor trust-scaled, "
        "weight decay 1e-4 as the SGD runs):",
        "",
        common.md_table(["", "kn", "test error", "per seed"], sweep_rows),
        "",
    ]
    if "kn_star" in analysis:
        lines += [
            f"kn* = **{analysis['kn_star']}**: the largest kn at which it and every smaller kn "
            f"stay within {TOLERANCE_PP} pp of the base's mean test error (Goyal et al.: 8k on "
            f"ImageNet); with a 1 pp tolerance it would be {analysis['kn_star_1pp']}.",
            "",
        ]
    if noise:
        lines += [
            f"**The noise scale.** B_simple = tr(Σ)/|G|² measured by the trainer on the base "
            f"runs (kn = {n}, `noise_scale.enabled`: the two halves of each batch, EMAs over "
            f"~100 steps), averaged over epochs {noise['epochs'][0]:g}–{noise['epochs'][1]:g} "
            f"(before the first decay): **{noise['mean']:.0f} ± {noise['sd']:.0f}** over seeds, "
            f"ranging {noise['min']:.0f}–{noise['max']:.0f} there; it grows as the loss falls "
            "(and jumps after each decay), as McCandlish et al. describe. "
            + (f"Against kn* = {analysis['kn_star']}: kn*/B_noise = "
               f"{analysis['kn_star'] / noise['mean']:.1f}." if "kn_star" in analysis else ""),
            "",
        ]  # fmt: skip
    lines += [f"![Figure 1 at small scale]({_rel(FIGURES['figure1'])})", ""]
    if target is not None:
        fit_text = ""
        if "s_min_at_b_noise" in analysis:
            fit_text = (
                f" With the measured B_noise = {noise['mean']:.0f}, the least-squares S_min is "
                f"{analysis['s_min_at_b_noise']:.0f} updates"
            )
            if "fit" in analysis:
                fit_text += (
                    f"; fitting both, B_noise = {analysis['fit']['b_noise']:.0f} and S_min = "
                    f"{analysis['fit']['s_min']:.0f}"
                )
            fit_text += "."
        lines += [
            f"**Updates to {target}% training error** (Shallue et al. 2018's measurement; the "
            "target is the base runs' training error at the first decay, rounded up to 0.5%; "
            "the first logged step at or below it; 'updates in the run' is the budget):",
            "",
            common.md_table(
                ["", "kn", "updates to target, per seed", "updates in the run"], steps_rows
            ),
            "",
            "McCandlish et al. predict S = S_min (1 + B_noise/B): halving the updates with each "
            "doubling of B well below B_noise (perfect scaling), diminishing returns near it, "
            f"no gain well above it.{fit_text}",
            "",
            f"![Updates to a target against the batch]({_rel(FIGURES['steps'])})",
            "",
        ]
    for paragraph in reading(out, analysis):
        lines += [paragraph, ""]
    return "\n".join(lines).rstrip()


def reading(out: dict, analysis: dict) -> list[str]:
    """What the numbers show and what they do not: computed where it depends on them."""
    s = out["setting"]
    n, lr = s["optimizer.base_batch_size"], s["optimizer.base_lr"]
    sgd, lars = analysis.get("sgd", {}), analysis.get("lars", {})
    broken = [b for b, e in sgd.items() if statistics.mean(e) >= CHANCE_ERROR - 1]
    lines = []
    if broken and "kn_star" in analysis:
        first = min(broken)
        last_good = max(b for b in sgd if b < first)
        lines.append(
            f"What sets SGD's frontier here: from kn = {first} (η = {lr * first / n:g}) up, "
            "every SGD run ends at chance: it learns during the warmup, then loses it as η "
            "grows (or its loss overflows), and does not recover after the decays (the curves "
            f"are in the JSON); while kn ≤ {last_good} (η ≤ {lr * last_good / n:g}) trains to "
            "within about half a point of the base. The linear scaling rule breaks by an "
            "unstable learning rate, not by running out of updates (kn = "
            f"{first} still has {_updates(s, first)}). That edge, kn* ≈ {analysis['kn_star']}–"
            f"{analysis['kn_star_1pp']}, lies at the measured B_noise (within its range over "
            "the first epochs), as McCandlish et al.'s model has it: their optimal learning "
            "rate ε_opt(B) = ε_max / (1 + B_noise/B) grows linearly only for B below B_noise "
            "and saturates above it, so the linear rule overshoots it by about B/B_noise."
        )
    if lars:
        errors = ", ".join(f"{statistics.mean(e):.1f}% at {b}" for b, e in lars.items())
        lines.append(
            "LARS (each layer's step bounded relative to its weights) trains at every kn where "
            f"SGD fails, but its error grows with kn ({errors}) as the run's updates shrink: it "
            "moves the frontier (no SGD run there learns at all) but does not reach the base in "
            f"{s['num_epochs']} epochs; the MLPerf recipe it follows was tuned for 56 epochs of "
            "ImageNet."
        )
    steps = analysis.get("sgd_steps", {})
    noise = analysis.get("b_noise") or {}
    if len(steps) >= 2 and noise:
        small, large = min(steps), max(steps)
        measured = steps[small] / steps[large]
        predicted = (1 + noise["mean"] / small) / (1 + noise["mean"] / large)
        lines.append(
            f"Updates to the target fall {measured:.1f}× from kn = {small} to {large} "
            f"({large // small}× the batch); S = S_min (1 + B_noise/B) with the measured "
            f"B_noise = {noise['mean']:.0f} predicts {predicted:.1f}×, so scaling here is closer "
            "to perfect than B_simple says: the free fit puts B_noise at "
            f"{analysis.get('fit', {}).get('b_noise', float('nan')):.0f}. McCandlish et al.'s "
            "B_simple is their simplified estimate (exact when the Hessian is a multiple of the "
            "identity), and it grows during training (to several hundred after the decays, "
            "Figure 1, right): the measured value is the right order, not a precise prediction."
        )
    lines.append(
        "Limits: 3 epochs of 60,000 images is a short run (Goyal et al. train 90 epochs of "
        "1.28M); the penalties of no and constant warmup are larger than the paper's because "
        "the time lost to the early spike is a larger share of the run. The updates-to-target "
        "measurement uses each run's own schedule, not a separate constant-lr run per batch "
        "with its own tuned lr as Shallue et al. do. Two seeds per sweep point and three in "
        "Table 1 give spreads of a few tenths of a point, the size of the 0.5 pp tolerance, so "
        "kn* is uncertain by a factor of 2. The machine was shared with other jobs during this "
        "run (see the load averages); the sum of the runs' CPU time, "
        f"{sum(r.get('cpu_seconds', 0) for r in out['results']) / 60:.0f} CPU-minutes, is "
        "what a quiet 2-core machine would spend, about half of it per core."
    )
    return lines


def _num_train(setting: dict) -> int:
    return setting.get("train_examples") or 60_000


def _updates(setting: dict, batch: int) -> int:
    """Updates in a run at `batch`."""
    return setting["num_epochs"] * (_num_train(setting) // batch)


def _rel(path: pathlib.Path) -> str:
    return str(path.relative_to(common.ROOT))


# ---------------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker()
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", default="table1,sweep,lars")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of Table 1's rows")
    parser.add_argument("--sweep-seeds", type=int, default=2, help="seeds per Figure 1 point")
    parser.add_argument("--sweep", default=",".join(map(str, SWEEP_BATCHES)))
    parser.add_argument("--lars", default=",".join(map(str, LARS_BATCHES)))
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
        analysis = analyse(out)
        plot_all(out, analysis)
        common.update_section(RESULTS_NAME, render(out, analysis))
        return
    SETTING.update(json.loads(args.set))
    _check_dataset()
    grid = jobs(
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
        "setting": {**SETTING, "optimizer.base_batch_size": BASE_BATCH},
        "k": K,
        "results": results,
        "elapsed_s": time.perf_counter() - t0,
        "machine": machine,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    analysis = analyse(out)
    print(json.dumps({k: v for k, v in analysis.items() if k != "updates_to_target"}, default=str))
    print(f"total {out['elapsed_s']:.0f} s")
    if args.tag:
        path = common.RESULTS / f"{args.tag}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1, default=str))
    if not args.no_write:
        plot_all(out, analysis)
        common.publish(RESULTS_NAME, out, render(out, analysis))
        print(f"wrote {', '.join(map(_rel, FIGURES.values()))} and section 8 of BENCHMARKS.md")


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
