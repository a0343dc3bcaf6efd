"""Precise BN on the default run: test accuracy per epoch, running averages vs precise BN.

One training run of configs/default.py with a checkpoint every epoch and precise BN off
(`bn.precise_batches=0`; precise BN never changes the weights, so they are those of the default
run). Each epoch's checkpoint is then scored with BN's running averages and with precise-BN
statistics over N training batches from the checkpoint's step (the trainer's own
`steps.precise_bn_*` functions and loader, N = 1 … 31, 31 being an epoch), and for N = 8 from
five positions an epoch apart (the spread a different draw of batches gives).

    python -m bench.precise_bn [--workdir runs/bench_precise_bn] [--no-write]
"""

import argparse
import pathlib
import sys

import jax

from bench import common
from bench.trainer_api import (
    Evaluator,
    config_for,
    read_metrics,
    resolve,
    restore_checkpoint,
    train_and_evaluate,
)
from recipe.data import datasets

NUM_BATCHES = (1, 2, 4, 8, 16, 31)
SPREAD_BATCHES, SPREAD_POSITIONS = 8, 5


def measure(workdir: pathlib.Path) -> dict:
    steps_per_epoch = resolve.resolve(config_for(), 1).layout.steps_per_epoch
    config = config_for(
        **{
            "bn.precise_batches": 0,
            "checkpoint_every_steps": steps_per_epoch,
            "keep_checkpoints": 100,
            "progress_bar": False,
        }
    )
    if not (workdir / "checkpoints").exists():
        train_and_evaluate(config, str(workdir))
    running = {r["step"]: r for r in read_metrics(workdir) if r["kind"] == "eval"}
    setup = resolve.resolve(config, jax.device_count())
    train_source, test_source = (
        datasets.load_source(config.dataset, split, config.data_dir)
        for split in (setup.spec.train_split, setup.spec.test_split)
    )
    runner = setup.runner()
    evaluator = Evaluator(
        setup, runner, train_source, test_source, precise_batches=max(NUM_BATCHES)
    )
    rows = []
    for step in sorted(running):
        _, state = restore_checkpoint(setup, str(workdir), step)
        device_state = runner.place(state)
        row = {
            "epoch": step / steps_per_epoch,
            "running": running[step]["accuracy"],
            "running_loss": running[step]["loss"],
        }
        for n in NUM_BATCHES:
            scores = _precise_scores(evaluator, device_state, step, n)
            row[f"N={n}"], row[f"N={n} loss"] = scores["accuracy"], scores["loss"]
        spread = [
            _precise_scores(evaluator, device_state, step + i * steps_per_epoch, SPREAD_BATCHES)[
                "accuracy"
            ]
            for i in range(SPREAD_POSITIONS)
        ]
        row["spread"] = [min(spread), max(spread)]
        print(row, flush=True)
        rows.append(row)
    return {"machine": common.machine(), "steps_per_epoch": steps_per_epoch, "rows": rows}


def _precise_scores(evaluator, device_state, step: int, num_batches: int) -> dict[str, float]:
    """Test loss and accuracy with precise BN over `num_batches` batches from `step`."""
    scored = evaluator.with_precise_bn(device_state, step, num_batches=num_batches)
    return evaluator.scores(scored)


def render(result: dict) -> str:
    rows = result["rows"]
    header = [
        "epoch",
        "running averages",
        *(f"precise, {n} batch{'es' * (n > 1)}" for n in NUM_BATCHES),
    ]
    header.append(f"precise, {SPREAD_BATCHES} batches, {SPREAD_POSITIONS} positions")
    table = [
        [
            f"{r['epoch']:g}",
            f"{100 * r['running']:.1f}",
            *(f"{100 * r[f'N={n}']:.1f}" for n in NUM_BATCHES),
            f"{100 * r['spread'][0]:.1f}–{100 * r['spread'][1]:.1f}",
        ]
        for r in rows
    ]
    return "\n".join([
        "## 7. Precise BN on the default run",
        "",
        "Re-run: `.venv/bin/python -m bench.precise_bn`. Test accuracy (%) of each epoch's "
        "checkpoint of configs/default.py, evaluated with BN's running averages "
        "(momentum 0.9) and with precise-BN statistics over N training batches of 128 from the "
        f"checkpoint's step ({result['steps_per_epoch']} steps per epoch). Precise BN never "
        "changes the weights, so one run serves every column, and the trainer's default, 8 "
        "batches, is what `make train` prints. The last column is the range over five positions "
        "of the 8 batches, an epoch apart: the spread of another draw. Run on "
        f"{result['machine']['date']} (accuracies, not times: the machine's load does not "
        "matter).",
        "",
        common.md_table(header, table),
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="runs/bench_precise_bn")
    parser.add_argument("--no-write", action="store_true", help=common.NO_WRITE_HELP)
    args = parser.parse_args()
    result = measure(pathlib.Path(args.workdir))
    text = render(result)
    if not args.no_write:
        common.publish("precise_bn", result, text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
