"""End to end on the embedded dataset: files written, exact resume, the describe command."""

import shutil

import chex
import numpy as np
import pytest
import tiny_config as tiny
from conftest import checkpoint_state
from tensorboard.backend.event_processing import event_file_loader

from recipe.train import trainer
from recipe.train.metrics import read_metrics


def test_run_writes_checkpoints_metrics_and_plots(finished_run):
    workdir, result = finished_run
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [4, 8, 12]
    records = read_metrics(workdir)
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    eval_steps = [r["step"] for r in records if r["kind"] == "eval"]
    assert train_steps == list(range(2, tiny.TOTAL_STEPS + 1, 2))
    assert eval_steps == [4, 8, 12]  # every epoch
    first = next(r for r in records if r["kind"] == "train")
    assert {"loss", "accuracy", "learning_rate", "images_per_sec", "epoch"} <= first.keys()
    assert (workdir / "curves.png").stat().st_size > 10_000
    (event_file,) = (workdir / "tensorboard").iterdir()
    tags = {
        value.tag
        for event in event_file_loader.EventFileLoader(str(event_file)).Load()
        for value in event.summary.value
    }
    assert {"train/loss", "train/learning_rate", "eval/accuracy"} <= tags
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["accuracy"] == pytest.approx(records[-1]["accuracy"])


def test_learning_rate_follows_the_schedule(finished_run):
    workdir, _ = finished_run
    lrs = {r["step"]: r["learning_rate"] for r in read_metrics(workdir) if r["kind"] == "train"}
    # base 0.1 at 32 → peak 0.1 · 1000/32 = 3.125; the lr logged after step s is that of update
    # s − 1: gradual warmup over updates 0..3, then ÷10 at update 8 (epoch 2).
    np.testing.assert_allclose(lrs[2], 0.1 + (3.125 - 0.1) * 1 / 4, rtol=1e-6)
    np.testing.assert_allclose(lrs[6], 3.125, rtol=1e-6)
    np.testing.assert_allclose(lrs[10], 0.3125, rtol=1e-6)


def test_resume_from_a_checkpoint_ends_with_the_same_params(finished_run, data_dir, tmp_path):
    workdir, _ = finished_run
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir, resumed)
    for step in (8, 12):  # as if the run had died after writing the step-4 checkpoint
        shutil.rmtree(resumed / "checkpoints" / str(step))
    trainer.train_and_evaluate(tiny.make_config(data_dir), str(resumed))
    chex.assert_trees_all_equal(
        checkpoint_state(resumed, tiny.TOTAL_STEPS), checkpoint_state(workdir, tiny.TOTAL_STEPS)
    )
    steps = [(r["kind"], r["step"]) for r in read_metrics(resumed)]
    assert len(steps) == len(set(steps)), "records of redone steps must not be duplicated"


def test_describe_prints_the_resolved_recipe(data_dir, tmp_path):
    text = trainer.describe(tiny.make_config(data_dir), tmp_path)
    assert "0.1 × 1000 / 32 = 3.125 (linear scaling rule)" in text
    assert "gradual, 4 updates" in text
    assert "×0.1 at updates [8]" in text
    assert "per device, over 250 examples" in text
    assert "stem_bn/scale" in text.split("no weight decay on")[1]
    assert (tmp_path / "lr_schedule.png").exists()
