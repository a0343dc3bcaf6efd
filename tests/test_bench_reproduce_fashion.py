"""The Fashion-MNIST reproduction's grid, analysis and section (bench/reproduce_fashion_*.py),
on made-up results: no training runs here."""

import math

import pytest

from bench import reproduce_fashion_analysis as analysis_of
from bench import reproduce_fashion_design as design
from bench import reproduce_fashion_section as section
from bench.trainer_api import config_for, resolve


def test_grid_holds_table1_the_sweep_and_lars_once_each():
    grid = design.jobs(("table1", "sweep", "lars"), table_seeds=3, sweep_seeds=2)
    assert len(grid) == 4 * 3 + len(design.SWEEP_BATCHES) * 2 + len(design.LARS_BATCHES) * 2
    assert len({job.key for job in grid}) == len(grid)
    table = [j for j in grid if j.group == "table1"]
    assert {j.batch for j in table} == {design.BASE_BATCH, design.BASE_BATCH * design.K}
    noisy = [j for j in grid if j.overrides.get("noise_scale.enabled")]
    assert {(j.name, j.batch) for j in noisy} == {("base", design.BASE_BATCH)}
    # Figure 1's points are Table 1's base and gradual rows plus the sweep: no batch twice.
    assert not set(design.SWEEP_BATCHES) & {design.BASE_BATCH, design.BASE_BATCH * design.K}
    # Table 1 first, longest (the base, which also measures the noise scale) first; then one
    # seed of every other point before the second.
    order = sorted(grid, key=design.queue_order)
    assert [j.name for j in order[:3]] == ["base"] * 3
    assert {j.group for j in order[:12]} == {"table1"}
    assert {
        j.seed for j in order[12 : 12 + len(design.SWEEP_BATCHES) + len(design.LARS_BATCHES)]
    } == {0}


@pytest.mark.parametrize("batch", [design.BASE_BATCH * design.K, 1024, 8192])
def test_every_run_resolves_to_its_learning_rate(batch):
    """The runs' configs pass the trainer's own checks; SGD follows the linear scaling rule
    from η = 0.4 per 32, LARS peaks at 10 whatever the batch."""
    sgd = {"batch_size": batch, "optimizer.warmup": "gradual"}
    lars = next(j for j in design.jobs(("lars",), 1, 1, (), (batch,))).overrides
    for overrides, peak in ((sgd, 0.4 * batch / 32), (lars, design.LARS_PEAK_LR)):
        setup = resolve.resolve(config_for(**{**design.SETTING, **overrides}), 1)
        assert setup.optimizer.schedule.peak_lr == pytest.approx(peak)
        assert setup.layout.steps_per_epoch == 60_000 // batch


def test_frontier_is_the_last_batch_of_the_run_within_tolerance_from_the_base():
    errors = {32: [10.0, 10.2], 64: [10.4, 10.5], 128: [11.0, 10.9], 256: [10.3, 10.4]}
    # 64 is within 0.5 of 10.1; 128 is not, so 256 (within again) does not count.
    assert analysis_of.frontier(errors, 32, 0.5) == 64
    assert analysis_of.frontier(errors, 32, 1.0) == 256
    assert analysis_of.frontier({32: [10.0], 64: [12.0]}, 32, 0.5) == 32


def test_steps_to_target_is_the_first_record_at_or_below_it():
    curve = [(0.1, 10, 40.0), (0.2, 20, 19.9), (0.3, 30, 20.5), (0.4, 40, 15.0)]
    assert analysis_of.steps_to_target(curve, 20.0) == 20
    assert analysis_of.steps_to_target(curve, 15.0) == 40
    assert analysis_of.steps_to_target(curve, 10.0) is None


def test_fits_recover_the_steps_model():
    s_min, b_noise = 300.0, 450.0
    batches = [32, 128, 512, 2048, 8192]
    steps = [s_min * (1 + b_noise / b) for b in batches]
    assert analysis_of.fit_s_min(batches, steps, b_noise) == pytest.approx(s_min)
    fitted_s_min, fitted_b_noise = analysis_of.fit_noise_scale(batches, steps)
    # The B grid is log-spaced (401 points over 7 decades: 4% apart).
    assert fitted_b_noise == pytest.approx(b_noise, rel=0.05)
    assert fitted_s_min == pytest.approx(s_min, rel=0.05)


def _run(group, name, batch, seed, error, *, noise=None, curve_errors=(50.0, 20.0, 10.0)):
    steps = 3 * (60_000 // batch)
    curve = [(3 * (i + 1) / len(curve_errors), steps * (i + 1) // len(curve_errors), e, 0.0, 0.1)
             for i, e in enumerate(curve_errors)]  # fmt: skip
    return {
        "group": group, "name": name, "seed": seed, "batch_size": batch,
        "test_error_precise_bn": error, "test_error_running_bn": error,
        "final_train_error": curve_errors[-1], "curve": curve, "train_seconds": 1.0,
        "noise_scale": [(e, s, b) for (e, s, *_), b in zip(curve, noise or (), strict=False)],
    }  # fmt: skip


def test_analysis_and_the_section_from_made_up_runs():
    results = []
    for seed in range(2):
        results += [
            _run("table1", "base", 32, seed, 10.0 + seed / 10, noise=(100.0, 200.0, 900.0),
                 curve_errors=(40.0, 21.2, 12.0)),
            _run("table1", "no warmup", 256, seed, 10.6),
            _run("table1", "constant warmup", 256, seed, 12.0),
            _run("table1", "gradual warmup", 256, seed, 10.2),
            _run("sweep", "kn=1024", 1024, seed, 11.0, curve_errors=(60.0, 30.0, 25.0)),
            _run("lars", "LARS kn=1024", 1024, seed, 10.5),
        ]  # fmt: skip
    results.append({"group": "sweep", "name": "kn=2048", "seed": 0, "failed": "killed"})
    out = {"setting": {**design.SETTING, "optimizer.base_batch_size": 32}, "k": 8,
           "results": results, "elapsed_s": 60.0, "machine": {}}  # fmt: skip
    analysis = analysis_of.analyse(out)
    assert analysis["kn_star"] == 256
    assert analysis["sgd"][1024] == [11.0, 11.0] and 2048 not in analysis["sgd"]
    # B_noise over epochs 0.1–2: the first two records (epochs 1 and 2) of each seed.
    assert analysis["b_noise"]["mean"] == pytest.approx(150.0)
    # The base's training error at the first decay (epoch 2) is 21.2: the target is 21.5.
    assert analysis["target"] == 21.5
    reached = analysis["updates_to_target"]["sgd"]
    assert reached[32] == [3750, 3750] and reached[1024] == [None, None]
    assert analysis["sgd_steps"] == {32: 3750, 256: 468}
    expected = math.sqrt(3750 / (1 + 150 / 32) * 468 / (1 + 150 / 256))
    assert analysis["s_min_at_b_noise"] == pytest.approx(expected)
    text = section.render(out, analysis)
    assert "| kn = 256, η = 3.2, gradual warmup | **10.20 ± 0.00** |" in text
    assert "kn* = **256**" in text and "1 runs failed" in text
