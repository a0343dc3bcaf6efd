"""Section 8 of BENCHMARKS.md: the Fashion-MNIST reproduction's tables and reading, written
from its results and their analysis (`bench/reproduce_fashion_analysis.py`)."""

import statistics

from bench import common, table1
from bench.reproduce_fashion_design import (
    CHANCE_ERROR,
    LARS_PEAK_LR,
    PRECISE_BN_EXAMPLES,
    TOLERANCE_PP,
    num_train,
    table1_rows,
    updates,
)
from bench.reproduce_fashion_figures import FIGURES

RESULTS_NAME = "reproduce_fashion"


def _cell(runs: list[dict]) -> list[str]:
    if not runs:
        return ["–", "–", "–"]
    mean, sd = table1.mean_sd([r["test_error_precise_bn"] for r in runs])
    per_seed = ", ".join(
        "diverged" if "diverged" in r else f"{r['test_error_precise_bn']:.2f}" for r in runs
    )
    train = statistics.mean(r["final_train_error"] for r in runs)
    return [f"**{mean:.2f} ± {sd:.2f}**", per_seed, f"{train:.2f}"]


def _verdict(difference: float) -> str:
    return "within" if difference <= TOLERANCE_PP else "not within"


def render(out: dict, analysis: dict) -> str:
    """Section 8's markdown from `bench.reproduce_fashion`'s saved output and its analysis."""
    s, k = out["setting"], out["k"]
    n, lr = s["optimizer.base_batch_size"], s["optimizer.base_lr"]
    m = out.get("machine", {})
    table1_runs = table1.by_name(out["results"], "table1")
    table = {name: table1_runs.get(name, []) for name in table1_rows()}
    rows = []
    for name, overrides in table1_rows(k, n).items():
        batch = overrides["batch_size"]
        rows.append(
            [f"kn = {batch}, η = {lr * batch / n:g}, {name}"]
            + _cell(table[name])
            + [table1.PAPER[name]]
        )
    means = {
        name: table1.mean_sd([r["test_error_precise_bn"] for r in rs])[0]
        for name, rs in table.items()
        if rs
    }
    failed = [r for r in out["results"] if "failed" in r]
    sweep_rows = []
    for kind, errors in (
        ("SGD, gradual warmup", analysis.get("sgd", {})),
        ("LARS", analysis.get("lars", {})),
    ):
        for batch, errs in errors.items():
            mean, sd = table1.mean_sd(errs)
            sweep_rows.append(
                [kind, batch, f"{mean:.2f} ± {sd:.2f}", ", ".join(f"{e:.2f}" for e in errs)]
            )
    noise = analysis.get("b_noise") or {}
    target = analysis.get("target")
    steps_rows = []
    for kind, by_batch in analysis.get("updates_to_target", {}).items():
        for batch, steps in by_batch.items():
            total = updates(s, batch)
            shown = ", ".join("not reached" if x is None else str(x) for x in steps)
            steps_rows.append([kind.upper() if kind == "lars" else "SGD", batch, shown, total])
    lines = [
        "## 8. Goyal et al. on Fashion-MNIST: Table 1, Figure 1's frontier and the noise scale "
        "(`make reproduce-fashion`)",
        "",
        f"Re-run: `make reproduce-fashion` (or `.venv/bin/python -m bench.reproduce_fashion`): "
        f"{len(out['results'])} training runs by two worker processes, each pinned to one core; "
        f"this run took **{out['elapsed_s'] / 60:.1f} min** on {m.get('cpu', '?')} "
        f"({m.get('cores', '?')} cores), {m.get('date', '?')}, load average "
        f"{m.get('load_before', '?')} at the start and {out.get('load_after', '?')} at the end"
        + (
            f"; {len(failed)} runs failed (see `bench/results/{RESULTS_NAME}.json`)"
            if failed
            else ""
        )
        + ".",
        "",
        "Setting: Fashion-MNIST (Xiao et al. 2017), "
        + (
            "all 60,000 training images"
            if num_train(s) == 60_000
            else f"the first {num_train(s)} training images"
        )
        + " (held decoded in memory), the 10,000 test images; "
        f"{s['model']} width {s['num_filters']} on "
        f"{s['image_size']}×{s['image_size']} inputs, {s['num_epochs']} epochs, Nesterov SGD, "
        "weight decay 1e-4 off BN, label smoothing "
        f"{s['label_smoothing']}, step decay ÷10 at epochs "
        f"{', '.join(f'{e:g}' for e in s['optimizer.decay_epochs'])}, warmup "
        f"{s['optimizer.warmup_epochs']:g} epochs, BN statistics over ghost batches of "
        f"{s['bn.ghost_batch_size']} whatever kn (Goyal §2.3), γ = 0 in each block's last BN. "
        f"Base batch n = {n} with η = {lr} (no warmup); kn scales η linearly. The setting is §5's "
        "on a dataset 15× larger: the same model, η and k, and the same proportions of warmup "
        "and decays in the run. Test error after recomputing BN statistics on "
        f"{PRECISE_BN_EXAMPLES} training images (every run's running-BN error is in the JSON). "
        "A run whose loss became non-finite counts as 90% (chance).",
        "",
        f"**Table 1** (test error %, mean ± std over {len(table['base'])} seeds; 'train' is the "
        "training-mode error of the last epoch; the paper's ImageNet numbers, kn = 256 vs 8k, "
        "for the shape):",
        "",
        common.md_table(["", "test error", "per seed", "train", "paper (ImageNet)"], rows),
        "",
    ]
    if {"base", "gradual warmup", "no warmup", "constant warmup"} <= set(means):
        base = means["base"]
        lines += [
            f"Against the base: gradual warmup {means['gradual warmup'] - base:+.2f} pp "
            f"({_verdict(means['gradual warmup'] - base)} {TOLERANCE_PP} pp), no warmup "
            f"{means['no warmup'] - base:+.2f} pp, constant warmup "
            f"{means['constant warmup'] - base:+.2f} pp (the paper: +0.14, +1.24, +2.28).",
            "",
        ]
    lines += [
        f"![Figure 2 at small scale]({common.relative(FIGURES['figure2'])})",
        "",
        "Training error (training-mode forward pass on augmented batches, as the trainer logs "
        "it; mean over seeds, min–max band), each large-batch warmup against the base, as in "
        "the paper's Figure 2.",
        "",
        "**Figure 1** (test error % against kn; SGD with gradual warmup and the linear scaling "
        f"rule, kn = {n} and {n * k} from Table 1; LARS as MLPerf's ResNet-50 reference below 16k: "
        f"trust coefficient 0.001, peak lr {LARS_PEAK_LR:g} at every kn, polynomial decay of "
        "power 2 to 1e-4 after the same warmup, BN and biases neither decayed nor trust-scaled, "
        "weight decay 1e-4 as the SGD runs):",
        "",
        common.md_table(["", "kn", "test error", "per seed"], sweep_rows),
        "",
    ]
    if "kn_star" in analysis:
        lines += [
            f"kn* = **{analysis['kn_star']}**: the largest kn at which it and every smaller kn "
            f"stay within {TOLERANCE_PP} pp of the base's mean test error (Goyal et al.: 8k on "
            f"ImageNet); with a 1 pp tolerance it would be {analysis['kn_star_1pp']}.",
            "",
        ]
    if noise:
        lines += [
            f"**The noise scale.** B_simple = tr(Σ)/|G|² measured by the trainer on the base "
            f"runs (kn = {n}, `noise_scale.enabled`: the two halves of each batch, EMAs over "
            f"~100 steps), averaged over epochs {noise['epochs'][0]:g}–{noise['epochs'][1]:g} "
            f"(before the first decay): **{noise['mean']:.0f} ± {noise['sd']:.0f}** over seeds, "
            f"ranging {noise['min']:.0f}–{noise['max']:.0f} there; it grows as the loss falls "
            "(and jumps after each decay), as McCandlish et al. describe. "
            + (f"Against kn* = {analysis['kn_star']}: kn*/B_noise = "
               f"{analysis['kn_star'] / noise['mean']:.1f}." if "kn_star" in analysis else ""),
            "",
        ]  # fmt: skip
    lines += [f"![Figure 1 at small scale]({common.relative(FIGURES['figure1'])})", ""]
    if target is not None:
        fit_text = ""
        if "s_min_at_b_noise" in analysis:
            fit_text = (
                f" With the measured B_noise = {noise['mean']:.0f}, the least-squares S_min is "
                f"{analysis['s_min_at_b_noise']:.0f} updates"
            )
            if "fit" in analysis:
                fit_text += (
                    f"; fitting both, B_noise = {analysis['fit']['b_noise']:.0f} and S_min = "
                    f"{analysis['fit']['s_min']:.0f}"
                )
            fit_text += "."
        lines += [
            f"**Updates to {target}% training error** (Shallue et al. 2018's measurement; the "
            "target is the base runs' training error at the first decay, rounded up to 0.5%; "
            "the first logged step at or below it; 'updates in the run' is the budget):",
            "",
            common.md_table(
                ["", "kn", "updates to target, per seed", "updates in the run"], steps_rows
            ),
            "",
            "McCandlish et al. predict S = S_min (1 + B_noise/B): halving the updates with each "
            "doubling of B well below B_noise (perfect scaling), diminishing returns near it, "
            f"no gain well above it.{fit_text}",
            "",
            f"![Updates to a target against the batch]({common.relative(FIGURES['steps'])})",
            "",
        ]
    for paragraph in reading(out, analysis):
        lines += [paragraph, ""]
    return "\n".join(lines).rstrip()


def reading(out: dict, analysis: dict) -> list[str]:
    """What the numbers show and what they do not: computed where it depends on them."""
    s = out["setting"]
    n, lr = s["optimizer.base_batch_size"], s["optimizer.base_lr"]
    sgd, lars = analysis.get("sgd", {}), analysis.get("lars", {})
    broken = [b for b, e in sgd.items() if statistics.mean(e) >= CHANCE_ERROR - 1]
    lines = []
    if broken and "kn_star" in analysis:
        first = min(broken)
        last_good = max(b for b in sgd if b < first)
        lines.append(
            f"What sets SGD's frontier here: from kn = {first} (η = {lr * first / n:g}) up, "
            "every SGD run ends at chance: it learns during the warmup, then loses it as η "
            "grows (or its loss overflows), and does not recover after the decays (the curves "
            f"are in the JSON); while kn ≤ {last_good} (η ≤ {lr * last_good / n:g}) trains to "
            "within about half a point of the base. The linear scaling rule breaks by an "
            "unstable learning rate, not by running out of updates (kn = "
            f"{first} still has {updates(s, first)}). That edge, kn* ≈ {analysis['kn_star']}–"
            f"{analysis['kn_star_1pp']}, lies at the measured B_noise (within its range over "
            "the first epochs), as McCandlish et al.'s model has it: their optimal learning "
            "rate ε_opt(B) = ε_max / (1 + B_noise/B) grows linearly only for B below B_noise "
            "and saturates above it, so the linear rule overshoots it by about B/B_noise."
        )
    if lars:
        errors = ", ".join(f"{statistics.mean(e):.1f}% at {b}" for b, e in lars.items())
        lines.append(
            "LARS (each layer's step bounded relative to its weights) trains at every kn where "
            f"SGD fails, but its error grows with kn ({errors}) as the run's updates shrink: it "
            "moves the frontier (no SGD run there learns at all) but does not reach the base in "
            f"{s['num_epochs']} epochs; the MLPerf recipe it follows was tuned for 56 epochs of "
            "ImageNet."
        )
    steps = analysis.get("sgd_steps", {})
    noise = analysis.get("b_noise") or {}
    if len(steps) >= 2 and noise:
        small, large = min(steps), max(steps)
        measured = steps[small] / steps[large]
        predicted = (1 + noise["mean"] / small) / (1 + noise["mean"] / large)
        lines.append(
            f"Updates to the target fall {measured:.1f}× from kn = {small} to {large} "
            f"({large // small}× the batch); S = S_min (1 + B_noise/B) with the measured "
            f"B_noise = {noise['mean']:.0f} predicts {predicted:.1f}×, so scaling here is closer "
            "to perfect than B_simple says: the free fit puts B_noise at "
            f"{analysis.get('fit', {}).get('b_noise', float('nan')):.0f}. McCandlish et al.'s "
            "B_simple is their simplified estimate (exact when the Hessian is a multiple of the "
            "identity), and it grows during training (to several hundred after the decays, "
            "Figure 1, right): the measured value is the right order, not a precise prediction."
        )
    lines.append(
        "Limits: 3 epochs of 60,000 images is a short run (Goyal et al. train 90 epochs of "
        "1.28M); the penalties of no and constant warmup are larger than the paper's because "
        "the time lost to the early spike is a larger share of the run. The updates-to-target "
        "measurement uses each run's own schedule, not a separate constant-lr run per batch "
        "with its own tuned lr as Shallue et al. do. Two seeds per sweep point and three in "
        "Table 1 give spreads of a few tenths of a point, the size of the 0.5 pp tolerance, so "
        "kn* is uncertain by a factor of 2. The machine was shared with other jobs during this "
        "run (see the load averages); the sum of the runs' CPU time, "
        f"{sum(r.get('cpu_seconds', 0) for r in out['results']) / 60:.0f} CPU-minutes, is "
        "what a quiet 2-core machine would spend, about half of it per core."
    )
    return lines
