"""The Fashion-MNIST reproduction's figures (bench/reproduce_fashion_*.png), from its results
and their analysis (`bench/reproduce_fashion_analysis.py`): Figure 1's test error against kn
beside the noise scale, Figure 2's training curves, and the updates to a target against the
batch."""

import statistics

from bench import common, table1
from bench.reproduce_fashion_design import LARS_PEAK_LR, TOLERANCE_PP, updates

FIGURES = {
    name: common.BENCH / f"reproduce_fashion_{name}.png" for name in ("figure1", "figure2", "steps")
}


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
        sds = [table1.mean_sd(e)[1] for e in errors.values()]
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
    for r in table1.completed(out["results"]):
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
    """Training-error band (`table1.error_band`) of runs whose curves are (epoch, step, error,
    loss, lr) records."""
    curves = [([c[0] for c in r["curve"]], [c[2] for c in r["curve"]]) for r in runs if r["curve"]]
    return table1.error_band(curves, grid)


def plot_figure2(out: dict, plt) -> None:
    """Figure 2 of the paper: training error vs epochs of each large-batch warmup against the
    base (mean over seeds, min–max band)."""
    import numpy as np

    by_name = table1.by_name(out["results"], "table1")
    grid = np.linspace(0, out["setting"]["num_epochs"], 300)
    n = out["setting"]["optimizer.base_batch_size"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, warmup in zip(axes, table1.WARMUPS, strict=True):
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
            total = [updates(out["setting"], b) for b in missed]
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
