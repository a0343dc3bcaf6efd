"""Section 5's figure: Goyal et al.'s Figure 2 at small scale, the training error against epochs
of each large-batch warmup beside the base batch (bench/reproduce_figure2.png), from the runs'
results (`bench/reproduce.py`)."""

import pathlib

from bench import common, table1

FIGURE = common.BENCH / "reproduce_figure2.png"


def plot(out: dict, path: pathlib.Path) -> None:
    """Figure 2 of the paper: training error vs epochs, each large-batch warmup against the
    base batch (mean over seeds, shaded min–max), plus the zero-γ ablation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    by_row = table1.by_name(out["results"])
    epochs = out["setting"]["num_epochs"]
    grid = np.linspace(0, epochs, 200)

    def band(name):
        curves = [
            ([c[0] for c in r["curve"]], [c[1] for c in r["curve"]]) for r in by_row.get(name, [])
        ]
        return table1.error_band(curves, grid)

    k, n = out["k"], out["setting"]["optimizer.base_batch_size"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), sharey=True, sharex=True)
    for row, suffix in enumerate(("", ", γ=1")):
        for col, warmup in enumerate(table1.WARMUPS):
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
