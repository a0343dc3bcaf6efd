"""10. Why warmup works: the study note's two reasons and the sharpness on the same runs over
seeds, the learning rates that train with and without warmup, and warmup started at the
measured stability edge, on the embedded MNIST-5k at kn = 256.

Three experiments, every run the trainer's `train.loop.train_and_evaluate` with config overrides
on section 5's setting (resnet8 width 8 on 14×14, ghost BN over 32, 12 epochs with a step decay
at 8 and 11, Nesterov momentum 0.9, weight decay 1e-4, label smoothing 0.1) with γ = 1 in each
block's last BN, where section 5's no-warmup and constant-warmup runs fail:

- *reasons*: no, constant and gradual warmup × 3 seeds with the trainer's three observers on:
  the relative update size ‖Δw‖/‖w‖ (`relative_update.enabled`, the note's first reason), the
  gradient noise scale B_simple (`noise_scale.enabled`, its second) and the sharpness λ_max by
  Lanczos (`sharpness.every_steps`, the third); none of them changes training (test_observers).
- *region*: test error over target rates ¼×…4× the scaled kη = 3.2 × warmups of none, 0.5 and
  2 epochs (section 5's), one seed per cell; at 1× the cells are the mean of the reasons and
  warm-start runs' 3 seeds.
- *warm start*: gradual warmups of 0.5, 1 and 2 epochs started at η (the paper's) or at the
  stability edge threshold / λ₀ (`optimizer.warmup_start=stability_edge`), 3 seeds; the
  2-epoch warmup from η is the reasons runs' gradual warmup.

Runs go one per core (pinned with `os.sched_setaffinity`), the observed ones first, each under
`timeout -s KILL`; a worker times one measurement, its products in a loop and unrolled, against a
training step.

    python -m bench.warmup_reasons                      # section 10 (≈ 35 min on 2 idle cores)
    python -m bench.warmup_reasons --small --no-write   # a few minutes, nothing written
    python -m bench.warmup_reasons run --overrides '{...}' --workdir D   # one run (a worker)
    python -m bench.warmup_reasons render bench/results/warmup_reasons.json   # text, figures
"""

import argparse
import functools
import json
import os
import pathlib
import queue
import shutil
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

from bench import common, table1

NAME = "warmup_reasons"
REASONS_FIGURE = common.BENCH / "warmup_reasons.png"
REGION_FIGURE = common.BENCH / "warmup_region.png"
WARMUPS = ("none", "constant", "gradual")
SEEDS = (0, 1, 2)
PEAK_LR = 3.2  # kη of section 5: η = 0.4 per 32 examples, kn = 256
SETTING = {
    **table1.SETTING,
    "batch_size": 256,
    "zero_init_last_bn": False,  # γ = 1: where section 5's warmups differ
    "eval_every_epochs": 12,
    "log_every_steps": 1,
    # A diverging run is measured until most of an epoch's updates are skipped (exit 3).
    "on_nonfinite": "skip",
}
# The three reasons, measured along the reasons runs.
OBSERVERS = {
    "relative_update.enabled": True,
    "noise_scale.enabled": True,
    "noise_scale.decay": 0.9,  # an EMA over ~10 steps (0.7 epochs): it follows the warmup
    "sharpness.every_steps": 3,
    "sharpness.iterations": 20,  # Lanczos: a residual below 1% (the table has each run's)
    "sharpness.method": "lanczos",
    "sharpness.unroll": True,  # on CPU about 8× faster a measurement (the cost line)
}
RATE_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
# Warmup lengths as fractions of the setting's (2 epochs, section 5's): 0 is no warmup.
REGION_WARMUPS = (0.0, 0.25, 1.0)
STARTS = {"η": "base_lr", "edge": "stability_edge"}
START_WARMUPS = (0.25, 0.5, 1.0)
# A quick look for iterating: 3 epochs, one seed, three rates, fewer measurements.
SMALL = {"num_epochs": 3, "optimizer.decay_epochs": (2,), "optimizer.warmup_epochs": 1.0,
         "eval_every_epochs": 3}  # fmt: skip
SMALL_OBSERVERS = {"sharpness.every_steps": 5, "sharpness.iterations": 8}


def plan(small: bool = False) -> dict[str, dict]:
    """{name: overrides} of every run, longest (the observed ones) first.

    >>> names = list(plan())
    >>> len(names), names[0], names[-1]
    (36, 'reasons none seed 0', 'region 4x warmup 1x seed 0')
    """
    setting = {**SETTING, **(SMALL if small else {})}
    observers = {**OBSERVERS, **(SMALL_OBSERVERS if small else {})}
    seeds = SEEDS[:1] if small else SEEDS
    scales = (0.25, 1.0, 4.0) if small else RATE_SCALES
    runs = {}
    for warmup in WARMUPS:
        for seed in seeds:
            runs[f"reasons {warmup} seed {seed}"] = {
                **setting, **observers, "optimizer.warmup": warmup, "seed": seed
            }  # fmt: skip
    for start, value in STARTS.items():
        for fraction in START_WARMUPS:
            if (start, fraction) == ("η", 1.0):
                continue  # the reasons runs' gradual warmup
            for seed in seeds:
                runs[_start_name(start, fraction, seed)] = {
                    **setting, **_gradual(fraction, setting), "optimizer.warmup_start": value,
                    "seed": seed,
                }  # fmt: skip
    for scale in scales:
        for fraction in REGION_WARMUPS:
            if scale == 1.0:
                continue  # the reasons and warm-start runs, all seeds
            runs[_region_name(scale, fraction)] = {
                **setting,
                **_gradual(fraction, setting),
                "optimizer.base_lr": setting["optimizer.base_lr"] * scale,
                "seed": 0,
            }
    return runs


def _gradual(fraction: float, setting: dict) -> dict:
    """A gradual warmup `fraction` of the setting's long (none at 0)."""
    if not fraction:
        return {"optimizer.warmup": "none"}
    epochs = fraction * setting["optimizer.warmup_epochs"]
    return {"optimizer.warmup": "gradual", "optimizer.warmup_epochs": epochs}


def _start_name(start: str, fraction: float, seed: int) -> str:
    if (start, fraction) == ("η", 1.0):
        return f"reasons gradual seed {seed}"
    return f"start {start} warmup {fraction:g}x seed {seed}"


def _region_name(scale: float, fraction: float, seed: int = 0) -> str:
    if scale == 1.0:
        if fraction in START_WARMUPS:
            return _start_name("η", fraction, seed)
        return f"reasons {'gradual' if fraction else 'none'} seed {seed}"
    return f"region {scale:g}x warmup {fraction:g}x seed {seed}"


def _length(fraction: float, setting: dict) -> str:
    """A warmup length as text: 'none' or 'N epochs'."""
    if not fraction:
        return "none"
    epochs = fraction * setting["optimizer.warmup_epochs"]
    return f"{epochs:g} epoch{'' if epochs == 1 else 's'}"


# ---------------------------------------------------------------------------------------------
# One run (a worker process).


def run_one(overrides: dict, workdir: pathlib.Path) -> dict:
    """Trains one run; returns its test accuracy and its series from metrics.jsonl."""
    from bench import trainer_api

    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    config = trainer_api.config_for(**overrides)
    try:
        accuracy = trainer_api.train_and_evaluate(config, str(workdir))["accuracy"]
        diverged = None
    except trainer_api.NonFiniteLossError as error:  # stopped by the skip counter (exit 3)
        accuracy, diverged = float("nan"), str(error)
    records = trainer_api.read_metrics(workdir)
    series: dict[str, dict[str, list]] = {}
    for record in records:
        kind = series.setdefault(record["kind"], {})
        for key in record.keys() - {"kind"}:
            kind.setdefault(key, [])
        for key, values in kind.items():
            values.append(record.get(key, float("nan")))
    train = series.get("train", {})
    kept = ("step", "epoch", "loss", "learning_rate", "noise_scale", "relative_update_max")
    return {
        "overrides": overrides,
        "elapsed_s": time.perf_counter() - start,
        "test_accuracy": accuracy,
        "diverged": diverged,
        "train": {k: train[k] for k in kept if k in train},
        "sharpness": series.get("sharpness", {}),
        "warmup_start": {k: v[0] for k, v in series.get("warmup_start", {}).items()},
    }


def _worker(name: str, overrides: dict, core: int | None, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="warmup_reasons_") as tmp:
        args = ["time" if name == COST else "run", "--overrides", json.dumps(overrides)]
        args += [] if name == COST else ["--workdir", f"{tmp}/run"]
        env = {"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
        start = (
            ["-m", "bench.warmup_reasons"] if core is None else ["-c", _PINNED.format(core=core)]
        )
        return common.run_worker([*start, *args], env=env, timeout=timeout)


# Pins the worker to one core before jax starts, then runs the module as `python -m` would.
_PINNED = (
    "import os, runpy, sys; os.sched_setaffinity(0, {{{core}}}); "
    "sys.argv = ['bench.warmup_reasons', *sys.argv[1:]]; "
    "runpy.run_module('bench.warmup_reasons', run_name='__main__')"
)


def run_all(runs: dict[str, dict], parallel: int, timeout: float) -> dict[str, dict]:
    """Every run, `parallel` at a time, each worker thread with a core of its own; a run that
    fails is recorded with its error rather than stopping the others."""
    cores = sorted(os.sched_getaffinity(0))
    pending: queue.Queue = queue.Queue()
    for item in runs.items():
        pending.put(item)
    results: dict[str, dict] = {}

    def work(core: int | None) -> None:
        while True:
            try:
                name, overrides = pending.get_nowait()
            except queue.Empty:
                return
            try:
                results[name] = _worker(name, overrides, core, timeout)
            except RuntimeError as error:
                results[name] = {"overrides": overrides, "failed": str(error)[-2000:]}
            print(f"{name}: {_summary(results[name])}", flush=True)

    pinned = len(cores) > 1
    threads = [
        threading.Thread(target=work, args=(cores[i % len(cores)] if pinned else None,))
        for i in range(parallel)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {name: results[name] for name in runs}


def _summary(result: dict) -> str:
    if "failed" in result:
        return "FAILED " + result["failed"].splitlines()[0]
    if "first_call_s" in result:
        return _cost_text(result)
    text = f"{result['elapsed_s']:.0f} s, test error {_error(result):.1f}%"
    if result.get("diverged"):
        text += " (diverged)"
    s = result["sharpness"]
    if s:
        text += (
            f", max η·λ_max {np.nanmax(s['lr_times_sharpness']):.3g}, "
            f"max residual {np.nanmax(s['sharpness_residual']):.1e}"
        )
    if result["warmup_start"]:
        text += f", λ₀ {result['warmup_start']['sharpness']:.3g}"
    return text


def _error(result: dict) -> float:
    """Test error %: a run that diverged or failed counts as chance (90%)."""
    accuracy = result.get("test_accuracy", float("nan"))
    return 90.0 if not np.isfinite(accuracy) else 100.0 * (1.0 - accuracy)


# ---------------------------------------------------------------------------------------------
# The cost of one measurement, its products in a loop and unrolled.

COST = "cost of a measurement"  # the timing worker's name among the runs
TIMING_ROUNDS = 5


def time_measurement(overrides: dict) -> dict:
    """Seconds of a training step and of one sharpness measurement of this setting with its
    products in a loop and unrolled (`SharpnessProbe(unroll=...)`): each first call (its
    compile) timed, then interleaved rounds."""
    import jax

    from bench import trainer_api
    from bench.trainer_api import inputs, resolve, sharpness, steps

    config = trainer_api.config_for(**overrides)
    setup = resolve.resolve(config, jax.device_count())
    train_source, _ = inputs.open_data(setup)
    runner = setup.runner()
    variables = steps.init_variables(setup.model, setup.image_shape, setup.seed)
    state = runner.place(steps.TrainState.create(variables, setup.optimizer.tx))
    train_step = runner.map(
        functools.partial(
            steps.train_step,
            model=setup.model,
            tx=setup.optimizer.tx,
            label_smoothing=setup.loop.label_smoothing,
            skip_nonfinite=setup.loop.skip_nonfinite,
            loss_penalty=setup.optimizer.loss_penalty,
            axis_name=runner.axis_name,
            normalize=inputs.normalizer(setup),
        )
    )
    probes = {
        f"measurement, {name}": sharpness.SharpnessProbe(setup, runner, train_source, unroll=unroll)
        for name, unroll in (("loop", False), ("unrolled", True))
    }
    batch = next(iter(probes.values())).batch  # the step sees the measurement's examples
    calls = {"step": lambda: jax.block_until_ready(train_step(state, batch))}
    calls |= {name: functools.partial(probe, state, 0) for name, probe in probes.items()}
    compile_s = {}
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        compile_s[name] = time.perf_counter() - start
    wall, cpu = common.time_interleaved(calls, rounds=TIMING_ROUNDS)
    return {
        "iterations": setup.loop.sharpness_iterations,
        "first_call_s": compile_s,
        "wall_s": {name: common.median(times) for name, times in wall.items()},
        "cpu_ratio": {name: common.paired_ratio(cpu, name, "step") for name in probes},
        "wall": wall,
        "cpu": cpu,
    }


def _cost_text(cost: dict) -> str:
    wall, first = cost["wall_s"], cost["first_call_s"]
    loop, unrolled = wall["measurement, loop"], wall["measurement, unrolled"]
    ratio = cost["cpu_ratio"]["measurement, unrolled"]
    return (
        f"one measurement of {cost['iterations']} products takes {unrolled:.2f} s unrolled "
        f"(`sharpness.unroll`, as these runs measure) against {loop:.2f} s in a loop "
        f"({loop / unrolled:.1f}×) "
        f"and {1e3 * wall['step']:.0f} ms a training step (wall, median of {TIMING_ROUNDS}; "
        f"CPU time {ratio[0]:.1f}× a step [{ratio[1]:.1f}, {ratio[2]:.1f}], "
        f"{ratio[0] / cost['iterations']:.2f}× a step per product); its first call, with the "
        f"compile, {first['measurement, unrolled']:.0f} s unrolled against "
        f"{first['measurement, loop']:.0f} s in a loop"
    )


# ---------------------------------------------------------------------------------------------
# The experiment.


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("run", help="one run, printing its JSON result (a worker)")
    one.add_argument("--overrides", required=True)
    one.add_argument("--workdir", required=True, type=pathlib.Path)
    parser.add_argument("--small", action="store_true", help="the quick variant")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (pinned)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per run")
    parser.add_argument("--no-write", action="store_true", help=common.NO_WRITE_HELP)
    timing = sub.add_parser("time", help="time a measurement against a step (a worker)")
    timing.add_argument("--overrides", required=True)
    again = sub.add_parser("render", help="the figures and text again from a results file")
    again.add_argument("results", type=pathlib.Path)
    args = parser.parse_args()
    if args.command == "run":
        common.emit(run_one(json.loads(args.overrides), args.workdir))
        return
    if args.command == "time":
        common.emit(time_measurement(json.loads(args.overrides)))
        return
    if args.command == "render":
        write(json.loads(args.results.read_text()), args.no_write)
        return

    info, start = common.machine(), time.perf_counter()
    runs = plan(args.small)
    # The timing runs after the observed runs, on the gradual warmup's setting.
    observed = [name for name in runs if name.startswith("reasons ")]
    jobs = {name: runs[name] for name in observed}
    jobs[COST] = runs[f"reasons gradual seed {SEEDS[0]}"]
    jobs |= runs
    results = run_all(jobs, args.parallel, args.timeout)
    cost = results.pop(COST)
    out = {
        "machine": info,
        "command": ".venv/bin/python -m bench.warmup_reasons" + (" --small" if args.small else ""),
        "elapsed_s": time.perf_counter() - start,
        "cpu_s": sum(r.get("elapsed_s", 0.0) for r in results.values()),
        "small": args.small,
        "setting": {**SETTING, **(SMALL if args.small else {})},
        "observers": {**OBSERVERS, **(SMALL_OBSERVERS if args.small else {})},
        "parallel": args.parallel,
        "results": results,
        "cost": cost,
    }
    saved = pathlib.Path(tempfile.gettempdir()) / f"{NAME}.json"
    saved.write_text(json.dumps(out, indent=1, default=str))  # kept if the text fails
    write(out, args.no_write)


def write(out: dict, no_write: bool) -> None:
    """The figures, and the section in BENCHMARKS.md (printed only, with `no_write`)."""
    figures = (REASONS_FIGURE, REGION_FIGURE)
    if no_write:
        figures = tuple(pathlib.Path(tempfile.gettempdir()) / f.name for f in figures)
    plot_reasons(out, figures[0])
    plot_region(out, figures[1])
    text = render(out)
    if no_write:
        print(text)
        print(f"figures: {', '.join(map(str, figures))}")
        return
    # The summary's rows for this section come from the headline (`bench/summary.py`), written
    # with the summary by `make bench` and `make reproduce`.
    common.publish(NAME, {**out, "headline": headline(out)}, text)


def headline(out: dict) -> dict:
    """The summary's numbers (`bench/summary.py` reads them from the results file)."""
    errors = {
        row["warmup"]: float(np.mean([s["error"] for s in row["seeds"]]))
        for row in reasons_rows(out)
    }
    _, verdict = render_start_table(out)
    return {"test_error": errors, "edge_saves_steps": verdict["edge_saves_steps"]}


# ---------------------------------------------------------------------------------------------
# Reading the runs.


def _reasons(results: dict, warmup: str) -> list[dict]:
    prefix = f"reasons {warmup} seed "
    return [r for n, r in results.items() if n.startswith(prefix) and "failed" not in r]


def _stacked(runs: list[dict], kind: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values [seed, point]) of one series over the seeds, NaN past a run's end."""
    longest = max(runs, key=lambda r: len(r[kind].get("epoch", [])))
    epochs = np.array(longest[kind]["epoch"], float)
    values = np.full((len(runs), len(epochs)), np.nan)
    for row, run in zip(values, runs, strict=True):
        series = np.array(run[kind].get(key, []), float)
        row[: len(series)] = series
    return epochs, values


def _steps_per_epoch(result: dict) -> float:
    train = result["train"]
    return train["step"][-1] / train["epoch"][-1]


def _band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with _quiet():
        return np.nanmedian(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)


def _quiet() -> warnings.catch_warnings:
    """Silences numpy's all-NaN slice warnings (a diverged run's missing tail)."""
    return warnings.catch_warnings(action="ignore", category=RuntimeWarning)


def reasons_rows(out: dict) -> list[dict]:
    """Per warmup, over the seeds: the three reasons' numbers and the outcome."""
    warmup_epochs = out["setting"]["optimizer.warmup_epochs"]
    rows = []
    for warmup in WARMUPS:
        runs = _reasons(out["results"], warmup)
        if not runs:
            continue
        per_seed = []
        for run in runs:
            train, s = run["train"], run["sharpness"]
            epoch = np.array(train["epoch"], float)
            update = np.array(train.get("relative_update_max", []), float)
            noise = np.array(train.get("noise_scale", []), float)
            product = np.array(s.get("lr_times_sharpness", []), float)
            s_epoch = np.array(s.get("epoch", []), float)
            after = (epoch > warmup_epochs) & (epoch <= 8)  # the rate at kη, before the decay
            with _quiet():
                per_seed.append({
                    "error": _error(run),
                    "diverged": bool(run.get("diverged")),
                    "update_first_epoch": np.nanmax(update[epoch <= 1]) if update.size else np.nan,
                    "update_median": np.nanmedian(update) if update.size else np.nan,
                    "noise_first_epoch": np.nanmedian(noise[epoch <= 1]) if noise.size else np.nan,
                    "noise_after_warmup": np.nanmedian(noise[after]) if noise.size else np.nan,
                    "product_init": train["learning_rate"][0]
                    * _initial_sharpness(out, run["overrides"]["seed"]),
                    "sharpness_first": s["sharpness"][0] if product.size else np.nan,
                    "max_product": np.nanmax(product) if product.size else np.nan,
                    "over": float(np.mean(product > s["sharpness_threshold"][0])) if product.size
                    else np.nan,
                    "product_after_warmup": np.nanmedian(
                        product[(s_epoch > warmup_epochs) & (s_epoch <= 8)]
                    ) if product.size else np.nan,
                    "residual_max": np.nanmax(s["sharpness_residual"]) if product.size else np.nan,
                    "max_loss": np.nanmax(train["loss"]),
                })  # fmt: skip
        rows.append({"warmup": warmup, "seeds": per_seed})
    return rows


def region_grid(out: dict, diverged: bool = False) -> np.ndarray:
    """Test error % [warmup length, rate scale] (NaN where a run is missing), at 1× the mean
    over the seeds run there; with `diverged`, the fraction of the cell's runs that diverged."""
    grid = np.full((len(REGION_WARMUPS), len(RATE_SCALES)), np.nan)
    for i, fraction in enumerate(REGION_WARMUPS):
        for j, scale in enumerate(RATE_SCALES):
            cell = [_region_name(scale, fraction)]
            if scale == 1.0:
                cell = [_region_name(scale, fraction, seed) for seed in SEEDS]
            runs = [out["results"][name] for name in cell if name in out["results"]]
            if runs:
                values = [bool(r.get("diverged")) if diverged else _error(r) for r in runs]
                grid[i, j] = np.mean(values)
    return grid


def _initial_sharpness(out: dict, seed: int) -> float:
    """λ₀ of `seed`'s initial weights on its first batch, as the warm-start runs measured it
    (the same seed: the same weights and batch as the reasons runs'); NaN if none did."""
    for fraction in START_WARMUPS:
        result = out["results"].get(_start_name("edge", fraction, seed), {})
        if result.get("warmup_start"):
            return result["warmup_start"]["sharpness"]
    return float("nan")


def start_table(out: dict) -> dict[tuple[str, float], list[dict]]:
    """{(start, warmup epochs): the seeds' results}, with no warmup as (start, 0)."""
    table = {}
    for start in STARTS:
        table[(start, 0.0)] = _reasons(out["results"], "none")
        for fraction in START_WARMUPS:
            names = [_start_name(start, fraction, seed) for seed in SEEDS]
            table[(start, fraction)] = [
                out["results"][n] for n in names if n in out["results"]
                and "failed" not in out["results"][n]
            ]  # fmt: skip
    return table


# ---------------------------------------------------------------------------------------------
# Figures.


def plot_reasons(out: dict, path: pathlib.Path) -> None:
    """The three reasons side by side over training, median and range over the seeds, one line
    per warmup: η, ‖Δw‖/‖w‖, B_simple against the batch, η·λ_max against the threshold, loss."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(24, 4.6))
    axes = fig.subplots(1, 5)
    batch = out["setting"]["batch_size"]
    threshold = None
    for color, warmup in zip(("C3", "C1", "C0"), WARMUPS, strict=True):
        runs = _reasons(out["results"], warmup)
        if not runs:
            continue
        panels = (
            (axes[0], "train", "learning_rate"),
            (axes[1], "train", "relative_update_max"),
            (axes[2], "train", "noise_scale"),
            (axes[3], "sharpness", "lr_times_sharpness"),
            (axes[4], "train", "loss"),
        )
        for ax, kind, key in panels:
            epochs, values = _stacked(runs, kind, key)
            middle, low, high = _band(values)
            marker = "o-" if kind == "sharpness" else "-"
            ax.plot(epochs, middle, marker, ms=2, color=color, label=f"{warmup} warmup")
            ax.fill_between(epochs, low, high, color=color, alpha=0.2, lw=0)
        threshold = runs[0]["sharpness"]["sharpness_threshold"][0]
    axes[2].axhline(batch, color="k", ls="--", lw=1, label=f"the batch, {batch}")
    if threshold is not None:
        axes[3].axhline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3g}")
    titles = (
        "learning rate η",
        "reason 1: ‖Δw‖/‖w‖, the layer moved most",
        "reason 2: gradient noise scale B_simple",
        "reason 3: η·λ_max (Lanczos)",
        "training loss",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if title != "learning rate η":
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Median and range over {len(SEEDS[:1] if out['small'] else SEEDS)} seeds, kn = {batch}, "
        f"kη = {out['setting']['optimizer.base_lr'] * batch / 32:g}, γ = 1"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def plot_region(out: dict, path: pathlib.Path) -> None:
    """Test error % over target rate × warmup length, one seed per cell but at 1× (the mean
    of the seeds run there): the heatmap."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    grid = region_grid(out)
    diverged = region_grid(out, diverged=True)
    fig = Figure(figsize=(8, 3.6))
    ax = fig.subplots()
    image = ax.imshow(grid, cmap="viridis_r", norm=LogNorm(vmin=1, vmax=90), aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if np.isfinite(value):
            color = "k" if value < 10 else "w"  # dark cells (high error) get white text
            label = "div." if diverged[i, j] == 1 else f"{value:.1f}"
            ax.text(j, i, label, ha="center", va="center", color=color, fontsize=10)
    ax.set_xticks(range(len(RATE_SCALES)))
    ax.set_xticklabels([f"{s:g}× = {s * PEAK_LR:g}" for s in RATE_SCALES])
    ax.set_yticks(range(len(REGION_WARMUPS)))
    ax.set_yticklabels([_length(f, out["setting"]) for f in REGION_WARMUPS])
    ax.set_xlabel("target learning rate kη (× the scaled rate 3.2)")
    ax.set_ylabel("gradual warmup")
    ax.set_title(
        f"Test error % after {out['setting']['num_epochs']} epochs: one seed per cell, at 1× the "
        "mean of 3;\ndiv.: diverged, counted as 90"
    )
    fig.colorbar(image, ax=ax, label="test error %")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


# ---------------------------------------------------------------------------------------------
# Text.


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return "–"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.2f}"


def _median_range(values: list[float], digits: int = 3) -> str:
    values = np.array([v for v in values if np.isfinite(v)], float)
    if not values.size:
        return "–"
    return f"{np.median(values):.{digits}g} [{values.min():.{digits}g}, {values.max():.{digits}g}]"


def render_reasons_table(out: dict) -> str:
    rows = []
    for row in reasons_rows(out):
        seeds = row["seeds"]

        def pick(key: str, seeds: list[dict] = seeds) -> list[float]:
            return [s[key] for s in seeds]

        rows.append([
            f"{row['warmup']} warmup",
            f"**{_mean_std(pick('error'))}** ({', '.join(f'{e:.1f}' for e in pick('error'))})",
            _median_range(pick("update_first_epoch")),
            _median_range(pick("noise_first_epoch")),
            _median_range(pick("noise_after_warmup")),
            _median_range(pick("product_init")),
            _median_range(pick("sharpness_first")),
            _median_range(pick("max_product")),
            _median_range([100 * v for v in pick("over")], 2) + "%",
            _median_range(pick("product_after_warmup")),
            _median_range(pick("max_loss")),
            f"{max(pick('residual_max')):.1e}",
        ])  # fmt: skip
    return common.md_table(
        ["warmup", "test error % (per seed)", "max ‖Δw‖/‖w‖, epoch ≤ 1",
         "B_simple, epoch ≤ 1", "B_simple, warmup end – epoch 8", "η·λ₀ at the first step",
         f"λ_max at step {out['observers']['sharpness.every_steps']} (first measured)",
         "max η·λ_max", "measurements over the threshold", "η·λ_max, warmup end – epoch 8",
         "max training loss", "largest residual"],
        rows,
    )  # fmt: skip


def render_start_table(out: dict) -> tuple[str, dict]:
    """The warm-start table and what it says: the shortest warmup of each start within noise
    of the paper's (2 epochs from η)."""
    table = start_table(out)
    reference = [_error(r) for r in table[("η", 1.0)]]
    paper = out["setting"]["optimizer.warmup_epochs"]
    steps = _steps_per_epoch(table[("η", 1.0)][0]) * paper if table[("η", 1.0)] else 30.0

    # Equal (or better) accuracy: a mean error at most the reference's plus the larger of the
    # two seed spreads and 0.5 pp (the binomial noise of 1,000 test images at ~3% error).
    def equal(errors: list[float]) -> bool:
        if not errors or not reference:
            return False
        spread = max(np.std(errors, ddof=1) if len(errors) > 1 else 0.0,
                     np.std(reference, ddof=1) if len(reference) > 1 else 0.0, 0.5)  # fmt: skip
        return np.mean(errors) <= np.mean(reference) + spread

    rows, shortest = [], {}
    for start in STARTS:
        cells, inits = [], []
        for fraction in (0.0, *START_WARMUPS):
            errors = [_error(r) for r in table[(start, fraction)]]
            mark = " ✓" if equal(errors) else ""
            cells.append(f"{_mean_std(errors)}{mark}")
            if equal(errors) and start not in shortest:
                shortest[start] = fraction
            inits += [
                r["warmup_start"]["warmup_init_lr"]
                for r in table[(start, fraction)] if r["warmup_start"]
            ]  # fmt: skip
        first = _median_range(inits) if inits else f"{out['setting']['optimizer.base_lr']:g}"
        rows.append([f"from {start}", first, *cells])
    header = ["warmup starts", "η_init (median [range])", "none",
              *(f"{_length(f, out['setting'])} ({round(f * steps)} steps)"
                for f in START_WARMUPS)]  # fmt: skip
    # What the edge start saves: the steps of the shortest warmup as good as the paper's from
    # η, less those from the edge (negative: it needs more).
    found = "η" in shortest and "edge" in shortest
    saved = round((shortest["η"] - shortest["edge"]) * steps) if found else None
    verdict = {"shortest": shortest, "steps": steps, "edge_saves_steps": saved}
    return common.md_table(header, rows), verdict


def render(out: dict) -> str:
    info, setting, results = out["machine"], out["setting"], out["results"]
    failed = [n for n, r in results.items() if "failed" in r]
    start_text, start_verdict = render_start_table(out)
    grid = region_grid(out)
    trains = {
        _length(f, setting): [f"{s:g}×" for s, v in zip(RATE_SCALES, row, strict=True) if v < 10]
        for f, row in zip(REGION_WARMUPS, grid, strict=True)
    }
    lambdas = [
        r["warmup_start"]["sharpness"] for r in results.values()
        if "failed" not in r and r.get("warmup_start")
    ]  # fmt: skip
    residuals = [
        r["warmup_start"]["sharpness_residual"] for r in results.values()
        if "failed" not in r and r.get("warmup_start")
    ]  # fmt: skip
    shortest = start_verdict["shortest"]
    saved = start_verdict["edge_saves_steps"]
    observers = out["observers"]
    title = "Why warmup works: three reasons, the trainable rates and a warm start"
    decays = ", ".join(f"{e:g}" for e in setting["optimizer.decay_epochs"])
    saved_text = "–" if saved is None else f"{saved} steps"
    paper = f"{setting['optimizer.warmup_epochs']:g}"
    shortest_text = {k: _shortest_text(shortest.get(k), setting) for k in STARTS}
    seeds = len(_reasons(results, "gradual"))
    cost = out.get("cost", {"failed": "not measured"})
    cost_text = (
        f"the timing failed ({cost['failed'].splitlines()[0]})"
        if "failed" in cost
        else _cost_text(cost)
    )
    return f"""## 10. {title} (`make warmup-reasons`)

Re-run: `make warmup-reasons` (or `{out["command"]}`): {len(results)} training runs,
{out["parallel"]} at a time, each pinned to one core; this run took
**{out["elapsed_s"] / 60:.1f} min** ({out["cpu_s"] / 60:.0f} run-minutes) on {info["cpu"]}
({info["cores"]} cores), {info["date"]}, load average {info["load_before"]} at the start.
{f"Failed runs (counted as 90% error): {', '.join(failed)}." if failed else "No run failed."}

Setting: section 5's with γ = 1 in each block's last BN (MNIST-5k, resnet8 width 8 on 14×14,
ghost BN over 32, label smoothing 0.1, Nesterov momentum 0.9, weight decay 1e-4 off BN,
{setting["num_epochs"]} epochs, ÷10 at epochs {decays}),
kn = {setting["batch_size"]} at kη = {PEAK_LR:g} (η = 0.4 per 32 examples), warmup
{setting["optimizer.warmup_epochs"]:g} epochs. Test error is the trainer's at the end (BN
statistics recomputed over {setting.get("bn.precise_batches", 8)} training batches); a run whose
updates turn non-finite for most of an epoch is stopped (`on_nonfinite=skip`) and counts as 90%.

### The three reasons on the same runs ({seeds} seeds per warmup)

The note's first reason is the relative update size ‖Δw‖/‖w‖ of each layer
(`--config.relative_update.enabled`; the table and figure show the layer moved most), its second
the gradient noise scale B_simple = tr(Σ)/‖G‖² (`--config.noise_scale.enabled`, the two halves of
each batch, EMA decay {observers["noise_scale.decay"]:g}); the third is the sharpness λ_max of
the training objective on a fixed batch of 256 by Lanczos with
{observers["sharpness.iterations"]} products every {observers["sharpness.every_steps"]} steps
(`--config.sharpness.every_steps`), against Nesterov SGD's stability threshold
η·λ_max < (2 + 2β)/(1 + 2β) = 1.357. Medians [range] over the seeds:

{render_reasons_table(out)}

![The three reasons side by side](bench/warmup_reasons.png)

### The trainable region (one seed per cell, at 1× the mean of the {seeds} seeds above)

![Test error over target rate × warmup](bench/warmup_region.png)

Rates that train (test error below 10%) per warmup:
{chr(10).join(f"- {k}: {', '.join(v) if v else 'none'}" for k, v in trains.items())}

### Warmup started at the stability edge ({seeds} seeds)

`--config.optimizer.warmup_start=stability_edge` starts the gradual warmup at
min(threshold / λ₀, kη), λ₀ measured on the first batch before the first step (here λ₀ =
{_median_range(lambdas)}, residual at most {max(residuals, default=float("nan")):.1e}).
Test error % (mean ± std over the seeds); ✓: as good as the {paper}-epoch warmup from η within
noise (a mean at most its mean plus the larger seed spread, or 0.5 pp):

{start_text}

Shortest warmup as good as the {paper}-epoch one: from η {shortest_text["η"]}, from the
stability edge {shortest_text["edge"]}. What the edge start saves at equal test error, against
the shortest warmup from η that is as good: {saved_text}.

Cost: {cost_text}. With `sharpness.every_steps` = 0 (the default) the loop builds and
compiles nothing for it and only tests `probe is not None` per step: no overhead.
"""


def _shortest_text(fraction: float | None, setting: dict) -> str:
    if fraction is None:
        return "none of those tried"
    return "no warmup" if fraction == 0 else _length(fraction, setting)


if __name__ == "__main__":
    sys.exit(main())
