"""Section 5 of BENCHMARKS.md: Table 1 and Table 2's zero-γ ablation at small scale on
MNIST-5k, written from the runs' results (`bench/reproduce.py`)."""

from bench import common, reproduce_figure, table1


def render(out: dict) -> str:
    """Section 5's markdown from `bench.reproduce`'s saved output (bench/results/reproduce.json)."""
    by_row = table1.by_name(out["results"])
    s, k = out["setting"], out["k"]
    n = s["optimizer.base_batch_size"]
    lr = s["optimizer.base_lr"]
    m = out.get("machine", {})

    def cell(name):
        rs = by_row.get(name, [])
        if not rs:
            return ["–", "–", "–"]
        mean, sd = table1.mean_sd([r["test_error_precise_bn"] for r in rs])
        train, _ = table1.mean_sd([r["final_train_error"] for r in rs])
        per_seed = ", ".join(f"{r['test_error_precise_bn']:.1f}" for r in rs)
        return [f"**{mean:.2f} ± {sd:.2f}**", per_seed, f"{train:.2f}"]

    rows = []
    for name in table1.ROW_NAMES:
        batch = n if name == "base" else n * k
        rows.append(
            [f"kn = {batch}, η = {lr * batch / n:g}, {name}"]
            + cell(name)
            + cell(f"{name}, γ=1")
            + [table1.PAPER[name]]
        )
    zero_rows = []
    for name in ("base", "gradual warmup"):
        one, zero = cell(f"{name}, γ=1")[0], cell(name)[0]
        batch = n if name == "base" else n * k
        paper = f"{table1.PAPER[f'{name}, γ=1']} vs {table1.PAPER[name].split(' ')[0]}"
        zero_rows.append([f"kn = {batch}, {name}", one, zero, paper])
    norms = []
    for name in table1.WARMUPS:
        for suffix in ("", ", γ=1"):
            rs = by_row.get(name + suffix, [])
            if rs and "conv_weight_norm" in rs[0]:
                norms.append(
                    f"{name}{suffix}: {table1.mean_sd([r['conv_weight_norm'] for r in rs])[0]:.1f}"
                )
    minutes = out["elapsed_s"] / 60
    bn_gap = max(
        (abs(r["test_error_precise_bn"] - r["test_error_running_bn"]) for rs in by_row.values()
         for r in rs),
        default=0.0,
    )  # fmt: skip
    decay_epochs = ", ".join(map(str, s["optimizer.decay_epochs"]))
    lines = [
        "## 5. Goyal et al. Table 1 at small scale (`make reproduce`)",
        "",
        "Re-run: `make reproduce` (or `.venv/bin/python -m bench.reproduce`): "
        f"{len(out['results'])} training runs, two at a time, each pinned to one core; this run "
        f"took **{minutes:.1f} min** on {m.get('cpu', '?')} ({m.get('cores', '?')} cores), "
        f"{m.get('date', '?')}, load average {m.get('load_before', '?')} at the start.",
        "",
        f"Setting: MNIST-5k (4,000 train / 1,000 test, embedded), {s['model']} width "
        f"{s['num_filters']} on {s['image_size']}×{s['image_size']} inputs, {s['num_epochs']} "
        f"epochs, Nesterov SGD, weight decay 1e-4 off BN, label smoothing "
        f"{s['label_smoothing']}, step decay ÷10 at epochs {decay_epochs}, "
        f"warmup {s['optimizer.warmup_epochs']:g} epochs, BN statistics over ghost batches of "
        f"{s.get('bn.ghost_batch_size', n)} (Goyal §2.3: n = 32 per worker whatever kn), γ = 0 "
        f"in each block's last BN (= 1 in the γ = 1 rows). Base batch n = {n}, η = {lr}; "
        f"large batch kn = {n * k} "
        f"(k = {k}), η = {lr * k:g} by the linear scaling rule. Each run is "
        "`train.loop.train_and_evaluate` with config overrides (`bench/reproduce.py`); test "
        "error is measured after recomputing BN statistics on the training set (mean of "
        "per-batch statistics). At the end of these runs (after the lr decays) it matters "
        f"little: the trainer's running-average BN statistics give test errors within "
        f"{bn_gap:.1f} pp of these (every run's both numbers are in "
        "`bench/results/reproduce.json`).",
        "",
        f"**Table 1** (test error %, mean ± std over {len(by_row.get('base', []))} seeds, with "
        "the paper's zero-γ init and again with γ = 1; 'train' is the training-mode error of "
        "the last epoch; the paper's ImageNet numbers for kn = 256 vs 8k beside them for the "
        "shape):",
        "",
        common.md_table(
            [
                "",
                "γ = 0: test error",
                "per seed",
                "train",
                "γ = 1: test error",
                "per seed",
                "train",
                "paper (ImageNet, γ = 0)",
            ],
            rows,
        ),
        "",
        "**Table 2, zero-γ ablation** (test error %, γ = 1 vs γ = 0 in each block's last BN):",
        "",
        common.md_table(["", "γ = 1", "γ = 0 (Goyal)", "paper γ = 1 vs γ = 0"], zero_rows),
        "",
        "Norm of all conv kernels at the end (mean over seeds; with BN every conv is "
        "scale-invariant, so its effective learning rate is η/‖W‖²): " + "; ".join(norms) + ".",
        "",
        f"![Figure 2 at small scale]({common.relative(reproduce_figure.FIGURE)})",
        "",
        "Training error (training-mode forward pass on augmented batches, as the trainer logs "
        "it, mean over seeds with the min–max band), each large-batch warmup against the base "
        "batch, as in the paper's Figure 2; top row with the paper's zero-γ init, bottom row "
        "with γ = 1.",
    ]
    return "\n".join(lines)
