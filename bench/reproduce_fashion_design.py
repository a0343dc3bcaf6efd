"""The runs of the Fashion-MNIST reproduction (`bench/reproduce_fashion.py`): its setting,
Table 1's rows (`bench/table1.py`'s, shared with section 5), Figure 1's batch-size sweep with
gradual warmup, LARS past it, and the order the workers take them in."""

from bench import table1

BASE_BATCH, K = table1.BASE_BATCH, table1.K  # Table 1: kn = 256
# Figure 1's sweep with gradual warmup (besides Table 1's base and gradual rows), and LARS.
SWEEP_BATCHES = (64, 128, 512, 1024, 2048, 4096, 8192)
LARS_BATCHES = (1024, 2048, 4096, 8192)
TOLERANCE_PP = 0.5  # kn*: the largest kn within this many points of the base's test error
PRECISE_BN_EXAMPLES = 8192
CHANCE_ERROR = 90.0  # ten classes: a diverged run counts as chance
NUM_TRAIN = 60_000

# Section 5's setting (resnet8 width 8 on 14×14, η = 0.4 per 32 examples so that kη at
# kn = 256 is the paper's 8k learning rate 3.2, label smoothing, zero-γ, BN over ghost batches
# of 32), on the whole 60,000-image training set for 3 epochs: warmup 0.5 epochs and the step
# decays at 2 and 2.75 keep §5's proportions (2, 8 and 11 of 12 epochs).
SETTING = {
    **table1.SETTING,
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


def table1_rows(k: int = K, base_batch: int = BASE_BATCH) -> dict[str, dict]:
    """Table 1's rows (`table1.rows`): name → overrides. The base measures the noise scale."""
    rows = table1.rows(k, base_batch)
    rows["base"] = {**rows["base"], "noise_scale.enabled": True}
    return rows


def jobs(
    groups: tuple[str, ...],
    table_seeds: int,
    sweep_seeds: int,
    sweep_batches: tuple[int, ...] = SWEEP_BATCHES,
    lars_batches: tuple[int, ...] = LARS_BATCHES,
) -> list[table1.Run]:
    """The grid: Table 1's rows × `table_seeds`; Figure 1's other batch sizes (gradual warmup)
    and LARS × `sweep_seeds`."""
    grid = []
    if "table1" in groups:
        grid += table1.runs("table1", table1_rows(), table_seeds)
    if "sweep" in groups:
        sweep = {
            f"kn={batch}": {"batch_size": batch, "optimizer.warmup": "gradual"}
            for batch in sweep_batches
        }
        grid += table1.runs("sweep", sweep, sweep_seeds)
    if "lars" in groups:
        lars = {
            f"LARS kn={batch}": {
                **LARS,
                "batch_size": batch,
                "optimizer.base_lr": LARS_PEAK_LR,
                "optimizer.base_batch_size": batch,
            }
            for batch in lars_batches
        }
        grid += table1.runs("lars", lars, sweep_seeds)
    return grid


def estimated_cost(job: table1.Run) -> float:
    """Relative CPU cost of a run (bench/results/fashion_design.json: CPU s per epoch at 14×14
    is ~30 at batch 32, ~24 at 128–256, ~32 at 1024, ~43 at 4096–8192; the noise scale adds a
    backward pass)."""
    per_epoch = {32: 30, 64: 27, 128: 24, 256: 24, 512: 28, 1024: 32, 2048: 38}.get(job.batch, 43)
    return per_epoch * (1.6 if job.overrides.get("noise_scale.enabled") else 1.0)


def queue_order(job: table1.Run) -> tuple:
    """Table 1 first, then the sweep's and LARS's first seed, then their second, …; the longest
    first within each: a grid cut short by its timeout keeps whole tables and one seed per
    point."""
    group = ("table1", "sweep", "lars").index(job.group)
    return (0 if job.group == "table1" else 1 + job.seed, group, -estimated_cost(job))


def num_train(setting: dict) -> int:
    """The training examples a run of `setting` reads."""
    return setting.get("train_examples") or NUM_TRAIN


def updates(setting: dict, batch: int) -> int:
    """Updates in a run at `batch`."""
    return setting["num_epochs"] * (num_train(setting) // batch)
