"""Goyal et al. Table 1 at small scale: the setting, the rows and the runs both reproductions
share (`bench/reproduce.py` on MNIST-5k, `bench/reproduce_fashion.py` on Fashion-MNIST), the
paper's numbers, and reading the runs' results back.

A run is a `Run`: its group, its row, its seed and its config overrides on top of `SETTING`
(configs/default.py is the base). A reproduction's results are a list of dicts, one per run,
holding the run's `name` and `seed` and, unless it failed (`'failed'` in the dict), its test
error `test_error_precise_bn`.
"""

import dataclasses
import statistics

import numpy as np

BASE_BATCH = 32  # n: Goyal §2.3's 32 examples per worker
K = 8  # Table 1's kn = 256 against n = 32: the ratio of the paper's 8k to 256

# The small-scale setting (see BENCHMARKS.md section 5 for why these values).
SETTING = {
    "model": "resnet8",
    "num_filters": 8,
    "image_size": 14,
    "num_epochs": 12,
    "eval_batch_size": 1000,
    # kη = 3.2, the paper's 8k learning rate (η is per 32 examples here, not per 256).
    "optimizer.base_lr": 0.4,
    "optimizer.base_batch_size": BASE_BATCH,
    "optimizer.warmup_epochs": 2.0,
    "optimizer.decay": "step",
    "optimizer.decay_epochs": (8, 11),
    "label_smoothing": 0.1,
    "zero_init_last_bn": True,
    # Goyal §2.3: BN statistics over n = 32 examples whatever the batch (one device here).
    "bn.scope": "ghost",
    "bn.ghost_batch_size": BASE_BATCH,
    "checkpoint_every_steps": 100_000,
    "keep_checkpoints": 1,
    "progress_bar": False,
}

WARMUPS = ("no warmup", "constant warmup", "gradual warmup")
ROW_NAMES = ("base", *WARMUPS)

PAPER = {  # Goyal et al. 2017, Tables 1 and 2 (ImageNet top-1 error %, kn = 256 vs 8k)
    "base": "23.60 ± 0.12",
    "no warmup": "24.84 ± 0.37",
    "constant warmup": "25.88 ± 0.56",
    "gradual warmup": "23.74 ± 0.09",
    "base, γ=1": "23.84",
    "gradual warmup, γ=1": "24.11",
}


def rows(k: int = K, base_batch: int = BASE_BATCH) -> dict[str, dict]:
    """Table 1's rows: name → overrides. The base batch n with no warmup, and kn with each
    warmup (the learning rate follows the linear scaling rule from `optimizer.base_lr` per
    `optimizer.base_batch_size` examples).

    >>> rows(8, 32)["gradual warmup"]
    {'batch_size': 256, 'optimizer.warmup': 'gradual'}
    """
    large = base_batch * k
    return {
        "base": {"batch_size": base_batch, "optimizer.warmup": "none"},
        "no warmup": {"batch_size": large, "optimizer.warmup": "none"},
        "constant warmup": {"batch_size": large, "optimizer.warmup": "constant"},
        "gradual warmup": {"batch_size": large, "optimizer.warmup": "gradual"},
    }


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: its group (e.g. 'table1'), row name, seed and config overrides."""

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


def runs(group: str, row_overrides: dict[str, dict], seeds: int) -> list[Run]:
    """Every row of `row_overrides` once per seed, the first seed of every row first.

    >>> [(r.name, r.seed) for r in runs("table1", {"a": {}, "b": {}}, 2)]
    [('a', 0), ('b', 0), ('a', 1), ('b', 1)]
    """
    return [
        Run(group, name, seed, overrides)
        for seed in range(seeds)
        for name, overrides in row_overrides.items()
    ]


def overrides_from_json(values: dict) -> dict:
    """Config overrides as a worker reads them back from JSON, which wrote tuples as lists.

    >>> overrides_from_json({"optimizer.decay_epochs": [8, 11], "batch_size": 32})
    {'optimizer.decay_epochs': (8, 11), 'batch_size': 32}
    """
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


# ---------------------------------------------------------------------------------------------
# Reading the results.


def completed(results: list[dict]) -> list[dict]:
    """The runs that did not fail (a diverged run completed: it counts at chance)."""
    return [r for r in results if "failed" not in r]


def by_name(results: list[dict], group: str | None = None) -> dict[str, list[dict]]:
    """The completed runs of each row name (of `group` only, if given), in the order they
    finished.

    >>> runs = [{"group": "table1", "name": "base", "seed": 0}, {"group": "sweep", "name": "x"}]
    >>> list(by_name(runs, "table1"))
    ['base']
    """
    grouped: dict[str, list[dict]] = {}
    for r in completed(results):
        if group is None or r.get("group") == group:
            grouped.setdefault(r["name"], []).append(r)
    return grouped


def mean_sd(xs: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for one value).

    >>> mean_sd([1.0, 3.0])
    (2.0, 1.4142135623730951)
    """
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def error_band(curves: list[tuple[list[float], list[float]]], grid: np.ndarray):
    """(mean, min, max) over runs of training-error curves, each (epochs, errors), interpolated
    onto the epochs `grid` (NaN before a curve's first record); None without curves."""
    if not curves:
        return None
    a = np.array([np.interp(grid, epochs, errors, left=np.nan) for epochs, errors in curves])
    return a.mean(0), a.min(0), a.max(0)
