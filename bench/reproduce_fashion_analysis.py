"""The Fashion-MNIST reproduction's analysis, pure functions of its results
(bench/results/reproduce_fashion.json): Figure 1's frontier kn*, the gradient noise scale
B_noise of the base runs (McCandlish et al. 2018), the updates to a target training error
against the batch (Shallue et al. 2018) and the fits of S = S_min (1 + B_noise / B)."""

import math
import statistics

from bench import table1
from bench.reproduce_fashion_design import TOLERANCE_PP


def errors_by_batch(results: list[dict], group: str) -> dict[int, list[float]]:
    """Test errors (precise BN; chance for a diverged run) per batch size of a sweep: 'sgd' is
    Table 1's base and gradual rows plus the gradual sweep, 'lars' the LARS runs."""
    by_batch: dict[int, list[float]] = {}
    for r in table1.completed(results):
        if group == "sgd":
            keep = r["group"] == "sweep" or (
                r["group"] == "table1" and r["name"] in ("base", "gradual warmup")
            )
        else:
            keep = r["group"] == group
        if keep:
            by_batch.setdefault(r["batch_size"], []).append(r["test_error_precise_bn"])
    return dict(sorted(by_batch.items()))


def frontier(errors: dict[int, list[float]], base_batch: int, tolerance: float) -> int:
    """kn*: the largest batch size such that it and every smaller one in the sweep have a mean
    test error within `tolerance` points of the base batch's.

    >>> frontier({32: [10.0], 64: [10.3], 128: [10.6], 256: [10.2]}, 32, 0.5)
    64
    """
    limit = statistics.mean(errors[base_batch]) + tolerance
    best = base_batch
    for batch in sorted(b for b in errors if b > base_batch):
        if statistics.mean(errors[batch]) > limit:
            break
        best = batch
    return best


def steps_to_target(curve: list, target: float) -> int | None:
    """The first logged step whose training error (each record's mean over its log interval)
    is at or below `target` %, or None if the run never gets there."""
    for _epoch, step, error, *_ in curve:
        if error <= target:
            return step
    return None


def fit_s_min(batches: list[float], steps: list[float], b_noise: float) -> float:
    """S_min of S = S_min (1 + B_noise / B) with B_noise given: least squares in log S.

    >>> round(fit_s_min([10, 100], [1100, 200], 100.0), 9)
    100.0
    """
    logs = [math.log(s / (1 + b_noise / b)) for b, s in zip(batches, steps, strict=True)]
    return math.exp(statistics.mean(logs))


def fit_noise_scale(batches: list[float], steps: list[float]) -> tuple[float, float]:
    """(S_min, B_noise) of S = S_min (1 + B_noise / B) fitted to measured (B, S), least squares
    in log S over a log-spaced grid of B_noise (S_min in closed form for each)."""
    best = None
    for i in range(401):
        b_noise = 10 ** (-1 + 7 * i / 400)  # 0.1 … 10⁶
        s_min = fit_s_min(batches, steps, b_noise)
        loss = sum(
            (math.log(s) - math.log(s_min * (1 + b_noise / b))) ** 2
            for b, s in zip(batches, steps, strict=True)
        )
        if best is None or loss < best[0]:
            best = (loss, s_min, b_noise)
    return best[1], best[2]


def noise_scale_summary(results: list[dict], first: float, last: float) -> dict:
    """B_simple of the base runs averaged over epochs [first, last] (mean ± std over seeds),
    and its range there."""
    per_seed, values = [], []
    for r in table1.completed(results):
        if r["group"] == "table1" and r["name"] == "base" and r["noise_scale"]:
            window = [b for epoch, _, b in r["noise_scale"] if first <= epoch <= last]
            if window:
                per_seed.append(statistics.mean(window))
                values += window
    if not per_seed:
        return {}
    mean, sd = table1.mean_sd(per_seed)
    return {
        "mean": mean,
        "sd": sd,
        "min": min(values),
        "max": max(values),
        "per_seed": per_seed,
        "epochs": (first, last),
    }


def updates_to_target(results: list[dict], target: float) -> dict[str, dict[int, list]]:
    """{'sgd' | 'lars': {batch: [steps to `target` % training error, or None, per seed]}}."""
    out: dict[str, dict[int, list]] = {"sgd": {}, "lars": {}}
    for r in table1.completed(results):
        if r["group"] == "lars":
            kind = "lars"
        elif r["group"] == "sweep" or r["name"] in ("base", "gradual warmup"):
            kind = "sgd"
        else:
            continue
        out[kind].setdefault(r["batch_size"], []).append(steps_to_target(r["curve"], target))
    return {kind: dict(sorted(v.items())) for kind, v in out.items()}


def analyse(out: dict) -> dict:
    """kn*, B_noise, the target and the steps to it, the S(B) fits: what the text and the
    figures show."""
    results = out["results"]
    setting = out["setting"]
    base = setting["optimizer.base_batch_size"]
    sgd = errors_by_batch(results, "sgd")
    lars = errors_by_batch(results, "lars")
    analysis: dict = {"sgd": sgd, "lars": lars}
    if base not in sgd:
        return analysis
    analysis["kn_star"] = frontier(sgd, base, TOLERANCE_PP)
    analysis["kn_star_1pp"] = frontier(sgd, base, 1.0)  # how much hangs on the tolerance
    first_decay = setting["optimizer.decay_epochs"][0]
    # The noise scale over the first epochs: from the end of its EMA's first ~100 steps to the
    # first decay.
    analysis["b_noise"] = noise_scale_summary(results, 0.1, first_decay)
    # The target: the base runs' mean training error at the first decay (reached at constant
    # lr), rounded up to a whole 0.5 %.
    base_runs = [
        r for r in table1.completed(results) if r["group"] == "table1" and r["name"] == "base"
    ]
    at_decay = [
        min((c for c in r["curve"] if c[0] <= first_decay), key=lambda c: first_decay - c[0])[2]
        for r in base_runs
    ]
    target = math.ceil(2 * statistics.mean(at_decay)) / 2
    analysis["target"] = target
    reached = updates_to_target(results, target)
    analysis["updates_to_target"] = reached
    points = {b: statistics.mean(s) for b, s in reached["sgd"].items() if s and None not in s}
    analysis["sgd_steps"] = points
    if len(points) >= 2 and analysis["b_noise"]:
        b_noise = analysis["b_noise"]["mean"]
        analysis["s_min_at_b_noise"] = fit_s_min(list(points), list(points.values()), b_noise)
        s_min, fitted = fit_noise_scale(list(points), list(points.values()))
        analysis["fit"] = {"s_min": s_min, "b_noise": fitted}
    return analysis
