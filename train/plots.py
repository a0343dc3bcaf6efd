"""PNG plots of a run: learning rate, loss and accuracy against steps and epochs.

Figures are built without pyplot, so importing this module leaves a notebook's backend alone.
matplotlib (0.6 s to import) is imported by the functions that draw, on their first call: a
trainer process that stops early, fails on bad input or only evaluates never pays for it.
Paths are `etils.epath` paths: local, or `gs://…` and the other stores epath reaches.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from etils import epath

from train.metrics import reporting_write_failures

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_run(records: list[dict[str, Any]], steps_per_epoch: int, path: epath.PathLike) -> None:
    """Three panels from `metrics.jsonl` records: lr, training loss, train/test accuracy; a
    fourth, η·λ_max against the stability threshold, when the run measured its sharpness."""
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    sharpness = [r for r in records if r["kind"] == "sharpness"]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(20 if sharpness else 15, 4))
    axes = fig.subplots(1, 4 if sharpness else 3)
    for ax, key, title in (
        (axes[0], "learning_rate", "learning rate"),
        (axes[1], "loss", "training loss (label-smoothed)"),
    ):
        ax.plot([r["step"] for r in train], [r[key] for r in train])
        ax.set_title(title)
        ax.set_xlabel("step")
        _epoch_axis(ax, steps_per_epoch)
    axes[2].plot(
        [r["step"] / steps_per_epoch for r in train],
        [100 * r["accuracy"] for r in train],
        label="train (augmented, running)",
    )
    axes[2].plot(
        [r["step"] / steps_per_epoch for r in evals],
        [100 * r["accuracy"] for r in evals],
        "o-",
        label="test",
    )
    axes[2].set_title("top-1 accuracy (%)")
    axes[2].set_xlabel("epoch")
    axes[2].legend()
    if sharpness:
        _plot_sharpness(axes[3], sharpness, steps_per_epoch)
    for ax in axes:
        ax.grid(alpha=0.3)
    _save_png(fig, path)


def _plot_sharpness(ax: Any, records: list[dict[str, Any]], steps_per_epoch: int) -> None:
    """η·λ_max and the optimizer's stability threshold (left axis), λ_max (right axis)."""
    steps = [r["step"] for r in records]
    ax.plot(steps, [r["lr_times_sharpness"] for r in records], "o-", ms=3, label="η·λ_max")
    ax.axhline(records[-1]["sharpness_threshold"], color="k", ls="--", label="stability threshold")
    ax.set_xlabel("step")
    ax.set_title("sharpness: η·λ_max")
    right = ax.twinx()
    right.plot(steps, [r["sharpness"] for r in records], color="C3", alpha=0.6, label="λ_max")
    right.set_ylabel("λ_max", color="C3")
    ax.legend(loc="upper right")
    _epoch_axis(ax, steps_per_epoch)


def plot_schedule(
    schedule: Callable[[Any], Any], total_steps: int, steps_per_epoch: int, path: epath.PathLike
) -> None:
    """The learning rate at every optimizer update of the run, from one call of `schedule` on
    all the steps (optax's schedules take arrays): `configs/imagenet_resnet50_goyal.py`'s 14,040
    updates, one eager call each, took 13 s."""
    steps = np.arange(total_steps + 1)
    lrs = np.asarray(schedule(steps))
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(steps, lrs)
    ax.set_xlabel("optimizer update")
    ax.set_ylabel("learning rate")
    ax.set_title("learning-rate schedule")
    ax.grid(alpha=0.3)
    _epoch_axis(ax, steps_per_epoch)
    _save_png(fig, path)


def _epoch_axis(ax: Any, steps_per_epoch: int) -> None:
    """A secondary x axis in epochs along the top."""
    top = ax.secondary_xaxis(
        "top", functions=(lambda s: s / steps_per_epoch, lambda e: e * steps_per_epoch)
    )
    top.set_xlabel("epoch")


def _save_png(fig: "Figure", path: epath.PathLike) -> None:
    """Writes `fig` through epath: matplotlib itself would treat `gs://b/x.png` as a local name.
    A failed write is a one-line `train.metrics.WorkdirWriteError`.

    Margins are fixed, in inches, for what every panel has (tick labels and a label on the
    left, a right-hand axis on the sharpness panel, the x label below, the title and the epoch
    axis above): matplotlib's tight_layout, which measures every text first, took 40% of a
    plot's time, and the trainer draws one per run."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=0.75 / width,
        right=1 - 0.7 / width,
        bottom=0.55 / height,
        top=1 - 0.85 / height,
        wspace=0.3,  # of a panel's width (about 4 inches): room for the next one's labels
    )
    with reporting_write_failures(f"the plot {path}"), epath.Path(path).open("wb") as file:
        fig.savefig(file, format="png", dpi=100)
