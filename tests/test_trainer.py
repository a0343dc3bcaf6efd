"""End to end on the embedded dataset: files written, exact resume, the describe command."""

import json
import shutil

import chex
import jax
import numpy as np
import pytest
import tiny_config as tiny
from conftest import checkpoint_state, expected_scalars, tensorboard_scalars

import recipe
from recipe import data
from recipe.data import datasets, pipeline
from train import checkpoints, describe, evaluation, inputs, loop, resolve
from train.metrics import read_metrics


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
    assert json.loads((workdir / "config.json").read_text())["model"] == "resnet8"
    assert len(list((workdir / "tensorboard").iterdir())) == 1
    scalars = tensorboard_scalars(workdir / "tensorboard")  # every logged scalar, as TB reads it
    assert {"train/loss", "train/learning_rate", "eval/accuracy"} <= scalars.keys()
    assert scalars == expected_scalars(records)
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


@pytest.mark.parametrize("flax_api", ["linen", "nnx"])
def test_resume_from_a_checkpoint_ends_with_the_same_params(flax_api, data_dir, tmp_path, request):
    workdir, _ = request.getfixturevalue(
        "finished_run" if flax_api == "linen" else "finished_nnx_run"
    )
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir, resumed)
    for step in (8, 12):  # as if the run had died after writing the step-4 checkpoint
        shutil.rmtree(resumed / "checkpoints" / str(step))
    loop.train_and_evaluate(tiny.make_config(data_dir, flax_api=flax_api), str(resumed))
    chex.assert_trees_all_equal(
        checkpoint_state(resumed, tiny.TOTAL_STEPS), checkpoint_state(workdir, tiny.TOTAL_STEPS)
    )
    steps = [(r["kind"], r["step"]) for r in read_metrics(resumed)]
    assert len(steps) == len(set(steps)), "records of redone steps must not be duplicated"


def test_a_resume_takes_changes_to_settings_that_do_not_apply(finished_run, data_dir, tmp_path):
    """A ghost-batch size without ghost BN, LARS's trust coefficient under SGD, Mixup's switch
    probability with Mixup off: changed on a resume, the run goes on as if they had not."""
    workdir, _ = finished_run
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir, resumed)
    for step in (8, 12):
        shutil.rmtree(resumed / "checkpoints" / str(step))
    unused = {
        "bn.ghost_batch_size": 7,
        "optimizer.trust_coefficient": 0.5,
        "mixing.switch_prob": 0.1,
        "sharpness.iterations": 3,
    }
    loop.train_and_evaluate(tiny.make_config(data_dir, **unused), str(resumed))
    chex.assert_trees_all_equal(
        checkpoint_state(resumed, tiny.TOTAL_STEPS), checkpoint_state(workdir, tiny.TOTAL_STEPS)
    )
    # One that applies is refused.
    with pytest.raises(checkpoints.IncompatibleCheckpointError, match="bn.momentum"):
        loop.train_and_evaluate(tiny.make_config(data_dir, **{"bn.momentum": 0.8}), str(resumed))


def test_surprising_settings_are_said(data_dir):
    text = describe.describe(
        tiny.make_config(
            data_dir, **{"optimizer.warmup_epochs": 0.1, "optimizer.name": "lars",
                         "optimizer.nesterov": False}
        )
    )  # fmt: skip
    notes = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("note ")]
    assert notes == [
        "optimizer.warmup_epochs=0.1 rounds to 0 of the 4 updates per epoch: this run has no "
        "warmup (one update of warmup is 0.25 epochs; optimizer.warmup='none' says so)",
        "optimizer.name='lars' keeps the SGD recipe's optimizer.base_lr=0.1 (peak 3.125); the "
        "LARS configs peak at 10 to 29 (configs/imagenet_resnet50_lars.py): set "
        "optimizer.base_lr",
    ]
    resized = describe.describe(tiny.make_config(data_dir, image_size=32, augment=False))
    (line,) = [line for line in resized.splitlines() if line.startswith("augmentation")]
    assert line.split(None, 1)[1] == (
        "none (augment=false): the training images as evaluation sees them; 28×28 images "
        "resized to 32×32 (image_size; box filter), for training and evaluation"
    )


def test_describe_prints_the_resolved_recipe(data_dir, tmp_path):
    text = describe.describe(tiny.make_config(data_dir), tmp_path)
    assert "resnet8 with stages (1,) (width 4, dtype float32" in text
    assert "0.1 × 1000 / 32 = 3.125 (linear scaling rule)" in text
    assert "gradual, 4 updates (1 epochs) from 0.1 to 3.125" in text
    assert "step ×0.1 at epochs 2 (as configured; updates 8)" in text
    assert "per device, over 250 examples" in text
    assert "4 updates of 1000 examples" in text
    decayed, not_decayed = text.split("\nweight decay on")[1].split("\nno weight decay on")
    assert "3 conv kernels, 1 dense kernel, 1 bias" in decayed  # one stage of one block
    assert "γ and β of 3 BatchNorm layers" in not_decayed
    assert (tmp_path / "lr_schedule.png").exists()


@pytest.mark.parametrize(
    ("dataset", "in_memory", "decoder"),
    [
        ("mnist5k", False, "uint8 arrays, no decoding"),
        ("fashion_mnist", False, "PNG decoded by TFDS on every read"),
        ("fashion_mnist", True, "decoded once and held in memory"),
        ("cifar10", False, "PNG decoded by TFDS on every read"),
    ],
)
def test_describe_says_how_the_images_are_decoded(data_dir, dataset, in_memory, decoder):
    config = tiny.make_config(data_dir, dataset=dataset, data_in_memory=in_memory)
    (line,) = [line for line in describe.describe(config).splitlines() if line.startswith("input")]
    assert f"; {decoder}" in line


def test_describe_places_the_paper_milestones_on_any_run_length(data_dir):
    text = describe.describe(
        tiny.make_config(data_dir, num_epochs=30, **{"optimizer.decay_epochs": None})
    )
    assert "at epochs 10, 20, 26.67 (Goyal's 30, 60, 80 of 90 placed on 30 epochs" in text


def test_train_examples_trains_on_a_class_balanced_subset_held_in_memory(data_dir):
    """`train_examples` draws N examples per class (epochs count N): mnist5k's training split is
    sorted by class, and its first 2,000 would be the digits 0–4 alone. `data_in_memory` holds
    the split decoded once per process; the subset reads it in place."""
    setup = resolve.resolve(tiny.make_config(data_dir, train_examples=2000, data_in_memory=True), 4)
    assert setup.spec.num_train == 2000 and setup.layout.steps_per_epoch == 2
    assert (
        "training subset    2000 of the 4000 training examples, drawn per class with a fixed "
        "seed: 200 of each of the 10 classes" in describe.describe(setup.config)
    )
    train, test = inputs.open_data(setup)
    assert (len(train), len(test)) == (2000, 1000)
    whole = datasets.load_in_memory("mnist5k", "train", data_dir)  # decoded once per process
    positions = data.class_balanced_subset(
        datasets.split_labels("mnist5k", "train", data_dir), 2000
    )
    for i in (0, 1999):
        np.testing.assert_array_equal(train[i]["image"], whole[positions[i]]["image"])
        assert train[i]["label"] == whole[positions[i]]["label"]
    assert np.bincount([train[i]["label"] for i in range(2000)]).tolist() == [200] * 10


@pytest.mark.parametrize("accumulation_steps", [1, 2, 4])
def test_accumulation_keeps_the_learning_rate_at_every_epoch_boundary(accumulation_steps, data_dir):
    """Micro-batches of 200 accumulated a times are the run at batch 200·a: same lr per epoch."""
    accumulated = resolve.resolve(
        tiny.make_config(data_dir, batch_size=200, accumulation_steps=accumulation_steps), 4
    )
    plain = resolve.resolve(tiny.make_config(data_dir, batch_size=200 * accumulation_steps), 4)
    a, p = accumulated.layout, plain.layout
    assert a.updates_per_epoch == p.steps_per_epoch
    assert a.steps_per_epoch == a.updates_per_epoch * accumulation_steps
    assert a.total_steps == accumulation_steps * p.total_steps
    epochs = range(tiny.get_config().num_epochs + 1)
    np.testing.assert_array_equal(
        [float(accumulated.optimizer.schedule(e * a.updates_per_epoch)) for e in epochs],
        [float(plain.optimizer.schedule(e * p.steps_per_epoch)) for e in epochs],
    )


def test_evaluate_only_scores_the_latest_checkpoint_and_writes_nothing(finished_run, data_dir):
    workdir, result = finished_run
    before = sorted((p, p.stat().st_mtime_ns) for p in workdir.rglob("*"))
    scored = evaluation.evaluate_checkpoint(tiny.make_config(data_dir), str(workdir))
    assert scored.pop("step") == tiny.TOTAL_STEPS
    chex.assert_trees_all_close(scored, result, rtol=1e-6)
    assert sorted((p, p.stat().st_mtime_ns) for p in workdir.rglob("*")) == before


def test_load_run_gives_the_trainers_final_accuracy(finished_run, data_dir):
    """The README's inference example: the model and weights from the work dir alone."""
    workdir, result = finished_run
    run = recipe.load_run(str(workdir))
    assert run.step == tiny.TOTAL_STEPS and run.config.model == "resnet8"
    source = datasets.load_source("mnist5k", run.spec.test_split, data_dir)
    apply = jax.jit(lambda images: run.model.apply(run.variables, images, train=False))
    correct = 0
    for batch in pipeline.eval_batches(
        source, run.spec, global_batch=500, process_index=0, process_count=1,
        local_device_count=1, image_size=run.config.image_size,
    ):  # fmt: skip
        predictions = np.argmax(apply(batch["image"][0]), -1)
        correct += int(np.sum((predictions == batch["label"][0]) * batch["mask"][0]))
    assert correct / len(source) == pytest.approx(result["accuracy"], abs=1e-9)


def test_load_run_takes_the_relative_path_the_guide_shows(finished_run, tmp_path, monkeypatch):
    """`load_run("runs/default")` from the checkout after `make train` (docs/trainer.md): a
    relative work dir, as users type it (orbax itself wants absolute paths)."""
    workdir, _ = finished_run
    shutil.copytree(workdir, tmp_path / "runs" / "default")
    monkeypatch.chdir(tmp_path)
    run = recipe.load_run("runs/default")
    assert run.step == tiny.TOTAL_STEPS
    chex.assert_trees_all_equal(run.variables, recipe.load_run(str(workdir)).variables)
    assert recipe.load_run("runs/default", step=8).step == 8
