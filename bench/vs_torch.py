"""2. The JAX train step against PyTorch eager on this CPU, and XLA:CPU options tried to close
the gap.

Both sides train the same ResNet (bench/torch_resnet.py mirrors recipe.models) on the same fixed
synthetic batch with the same recipe: JAX runs the project's `train.steps.train_step` with
`recipe.optim.build_optimizer` under the trainer's default pmap runner on one CPU device;
PyTorch runs SGD Nesterov with no decay on BN, LinearLR→MultiStepLR via SequentialLR and
`CrossEntropyLoss(label_smoothing=0.1)`. A step is timed from the call until its results are
ready (the batch already in memory: the loader is section 3).

Each measurement is a worker process (XLA reads `XLA_FLAGS` once, at start):

    python -m bench.vs_torch                # everything, writes section 2
    python -m bench.vs_torch worker --framework jax --model resnet18 --stem cifar ...
    XLA_FLAGS=--xla_cpu_... python -m bench.vs_torch worker --framework jax ...
    python -m bench.vs_torch worker --framework torch --channels-last ...

`python -m bench.vs_torch` (or `bench/run_all.py`) drives them, interleaving variants in rounds,
and writes section 2 of BENCHMARKS.md.
"""

import argparse
import os
import sys
import time

import numpy as np

from bench import common, compared_step, profile_step


def _time(step, args) -> dict:
    c0, t0 = time.process_time(), time.perf_counter()
    losses = [step()]
    first = time.perf_counter() - t0
    first_cpu = time.process_time() - c0
    for _ in range(args.warmup):
        losses.append(step())
    wall, cpu = [], []
    for _ in range(args.steps):
        c0, t0 = time.process_time(), time.perf_counter()
        losses.append(step())
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "first_s": first,
        "first_cpu_s": first_cpu,
        "wall": wall,
        "cpu": cpu,
        "step_ms": 1e3 * common.median(wall),
        "images_per_s": args.batch / common.median(wall),
        "losses": [float(x) for x in losses[:3]],
        "load": os.getloadavg()[0],
    }


def jax_worker(args) -> dict:
    import jax

    setup, stepper = compared_step.jax_stepper(args)
    train_step = stepper.step

    def step():
        stepper.state, metrics = train_step(stepper.state, stepper.batch)
        return np.asarray(metrics["loss"])[0]  # waits for the step

    result = _time(step, args)
    result["params"] = int(
        sum(x.size for x in jax.tree_util.tree_leaves(setup.variables["params"]))
    )
    return result


def torch_worker(args) -> dict:
    import torch

    from bench import torch_resnet

    torch.manual_seed(0)
    model = torch_resnet.ResNet(
        args.model, in_channels=args.channels, num_filters=args.width, stem=args.stem
    )
    model.train()
    images, labels = compared_step.fixed_batch(args)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels).long()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if args.dtype == "bfloat16":
        raise SystemExit("bf16 autocast is not part of this comparison")
    k = args.batch / 32  # the default config: base batch 32, gradual warmup over 2 epochs
    spe = 4000 // args.batch
    train_step = torch_resnet.build_training(
        model, base_lr=0.1, k=k, warmup_steps=2 * spe, milestones=[8 * spe, 12 * spe, 14 * spe]
    )
    if args.torch_compile:
        train_step = torch.compile(train_step)

    def step():
        loss, _ = train_step(x, y)
        return loss.item()

    result = _time(step, args)
    result["params"] = sum(p.numel() for p in model.parameters())
    result["threads"] = torch.get_num_threads()
    return result


def worker_main(argv) -> None:
    args = compared_step.worker_args(argv)
    result = jax_worker(args) if args.framework == "jax" else torch_worker(args)
    result["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    result["args"] = vars(args)
    common.emit(result)


# ---------------------------------------------------------------------------------------------
# The driver.

EIGEN_CONV = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"

MODELS = {
    "default": {
        "label": "configs/default.py model: ResNet-20, width 8, 28×28×1, batch 128",
        "args": ["--model", "resnet20", "--width", "8", "--image", "28", "--channels", "1",
                 "--batch", "128"],
        "steps": 20,
    },
    "resnet18": {
        "label": "CIFAR ResNet-18 (3×3 stem), width 64, 32×32×3, batch 128",
        "args": ["--model", "resnet18", "--stem", "cifar", "--width", "64", "--image", "32",
                 "--channels", "3", "--batch", "128"],
        "steps": 4,
    },
}  # fmt: skip

# (label, XLA_FLAGS, extra worker args): what was tried on the JAX side. The first is the
# baseline every ratio in the attempts table is computed against (same run, same rounds).
JAX_ATTEMPTS = [
    ("default (jaxlib's XLA:CPU: convolutions through YNNPACK)", "", []),
    ("convolutions through Eigen instead of YNNPACK", EIGEN_CONV, []),
    ("+ YNNPACK for dots, element-wise and reductions too",
     "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce", []),
    ("oneDNN thunks for matmul/conv fusions", "--xla_cpu_use_onednn=true", []),
    ("oneDNN custom calls", "--xla_cpu_experimental_onednn_custom_call=true", []),
    ("XNNPACK off", "--xla_cpu_use_xnnpack=false", []),
    ("XNNPACK greedy graph fusion",
     "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY", []),
    ("fast math", "--xla_cpu_enable_fast_math=true", []),
    ("FAST_RUNTIME optimisation preset", "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME", []),
    ("512-bit vectors in generated code", "--xla_cpu_prefer_vector_width=512", []),
    ("single-threaded Eigen", "--xla_cpu_multi_thread_eigen=false", []),
    ("bfloat16 compute (config.dtype)", "", ["--dtype", "bfloat16"]),
    ("bfloat16 compute + Eigen convolutions", EIGEN_CONV, ["--dtype", "bfloat16"]),
]  # fmt: skip


def run_variants(
    model: str,
    variants: list[tuple[str, str, list[str]]],
    rounds: int,
    timeout: float = 900,
    steps: int | None = None,
) -> dict[str, dict]:
    """Runs every variant's worker `rounds` times, in a fresh random order each round, and
    pools the timed steps. variants: (label, XLA_FLAGS, worker args)."""
    import random

    spec = MODELS[model]
    pooled: dict[str, dict] = {}
    order = list(range(len(variants)))
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for i in order:
            label, flags, extra = variants[i]
            n = str(steps or spec["steps"])
            argv = ["-m", "bench.vs_torch", "worker", *spec["args"], "--steps", n, *extra]
            try:
                r = common.run_worker(argv, env={"XLA_FLAGS": flags}, timeout=timeout)
            except RuntimeError as error:
                pooled.setdefault(label, {"error": str(error)[-500:]})
                continue
            p = pooled.setdefault(label, {"wall": [], "cpu": [], "first_s": [], "load": []})
            p["wall"] += r["wall"]
            p["cpu"] += r["cpu"]
            p["first_s"].append(r["first_s"])
            p["load"].append(r["load"])
            p["losses"], p["flags"], p["params"] = r["losses"], flags, r["params"]
            p["framework"] = r["args"]["framework"]
    for p in pooled.values():
        if "wall" in p:
            p["step_ms"] = 1e3 * common.median(p["wall"])
            p["cpu_ms"] = 1e3 * common.median(p["cpu"])
            p["q"] = [1e3 * q for q in common.quartiles(p["wall"])]
            p["images_per_s"] = int(spec["args"][spec["args"].index("--batch") + 1]) / (
                p["step_ms"] / 1e3
            )
    return pooled


BF16_EIGEN = "JAX, bfloat16 + Eigen convolutions"

HEADLINE = [
    ("JAX, default XLA:CPU", "", ["--framework", "jax"]),
    ("JAX, Eigen convolutions", EIGEN_CONV, ["--framework", "jax"]),
    ("PyTorch eager, NCHW", "", ["--framework", "torch"]),
    ("PyTorch eager, channels_last", "", ["--framework", "torch", "--channels-last"]),
]


def profile(model: str, timeout: float = 900) -> dict[str, dict]:
    """Per-category thread-time of one step (bench/profile_step.py) for the headline variants."""
    out = {}
    # Not the Eigen-convolution variant: Eigen runs convolutions asynchronously in its own
    # thread pool, outside the thunk events, so the profile cannot attribute their time.
    for label, flags, extra in (HEADLINE[0], HEADLINE[2]):
        argv = ["-m", "bench.profile_step", *MODELS[model]["args"], "--warmup", "1", *extra]
        try:
            out[label] = common.run_worker(argv, env={"XLA_FLAGS": flags}, timeout=timeout)
        except RuntimeError as error:
            out[label] = {"error": str(error)[-500:]}
    return out


def measure(quick: bool = False, models: tuple[str, ...] = tuple(MODELS)) -> dict:
    rounds = 1 if quick else 2
    result: dict = {"machine": common.machine(), "headline": {}, "profile": {}, "attempts": {}}
    for model in models:
        variants = [
            (label, flags, extra + (["--steps", "3", "--warmup", "1"]
                                    if model == "default" and "--channels-last" in extra else []))
            for label, flags, extra in HEADLINE
        ]  # fmt: skip
        if model == "resnet18":  # the best of the attempts on the default model, here too
            variants.append((BF16_EIGEN, EIGEN_CONV, ["--framework", "jax", "--dtype", "bfloat16"]))
        result["headline"][model] = run_variants(
            model, variants, 1 if model == "resnet18" else rounds
        )
        result["profile"][model] = profile(model)
    attempts = [
        (label, flags, ["--framework", "jax", *extra]) for label, flags, extra in JAX_ATTEMPTS
    ]
    # One round: each attempt is one worker of 10 timed steps (the sweep looks for large
    # effects; the headline variants above get the repeated rounds).
    result["attempts"]["default"] = run_variants("default", attempts, 1, steps=10)
    if "resnet18" in models:
        h = result["headline"]["resnet18"]
        result["attempts_resnet18"] = {
            JAX_ATTEMPTS[0][0]: h[HEADLINE[0][0]],
            JAX_ATTEMPTS[1][0]: h[HEADLINE[1][0]],
            JAX_ATTEMPTS[-1][0]: h[BF16_EIGEN],
        }
    result["machine"]["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return result


def _ms(p: dict) -> str:
    if "step_ms" not in p:
        return "failed"
    return f"{p['step_ms']:.0f} ({p['q'][0]:.0f}–{p['q'][1]:.0f})"


def render(result: dict) -> str:
    m = result["machine"]
    lines = [
        "## 2. JAX against PyTorch eager on this CPU",
        "",
        f"Re-run: `make bench` (all of 1–4) or `.venv/bin/python -m bench.vs_torch` (this "
        f"section). Run on {m['date']}: {m['cpu']}, {m['cores']} cores; jax {m['jax']}, jaxlib "
        f"{m['jaxlib']}, flax {m['flax']}, optax {m['optax']}, torch {m['torch']}. Load average "
        f"{m['load_before']} before, {m.get('load_after', '?')} after.",
        "",
        "Both sides train the same network (`bench/torch_resnet.py` mirrors `recipe.models`: "
        "same blocks, projection shortcuts, init, parameter count) on the same fixed batch with "
        "the same recipe: JAX runs `train.steps.train_step` + `recipe.optim.build_optimizer` "
        "under the trainer's pmap runner on one CPU device; PyTorch runs SGD Nesterov with no "
        "weight decay on BN (parameter groups), `LinearLR`→`MultiStepLR` via `SequentialLR` and "
        "`CrossEntropyLoss(label_smoothing=0.1)`, 2 intra-op threads. Step = call until the loss "
        "is on the host; median (interquartile range) in ms over the timed steps of all rounds, "
        "after compilation and warm-up steps; each variant is its own process, variants "
        "interleaved in random order.",
        "",
    ]
    for model, spec in MODELS.items():
        if model not in result["headline"]:
            continue
        h = result["headline"][model]
        lines += [f"**{spec['label']}**", ""]
        rows = []
        torch_best = min(
            (p["step_ms"] for k, p in h.items() if k.startswith("PyTorch") and "step_ms" in p),
            default=float("nan"),
        )
        for label, p in h.items():
            if "step_ms" not in p:
                rows.append([label, "failed", "", "", ""])
                continue
            rows.append([
                label,
                _ms(p),
                f"{p['images_per_s']:.0f}",
                f"{p['step_ms'] / torch_best:.2f}×",
                f"{common.median(p['first_s']):.1f}",
            ])  # fmt: skip
        lines += [
            common.md_table(
                ["variant", "step ms", "images/s", "step time / fastest PyTorch", "first step s"],
                rows,
            ),
            "",
        ]
    lines += [
        "### Where the time goes",
        "",
        "Thread-time per step by kind of operation (ms; JAX: XLA:CPU thunk events from "
        "`jax.profiler`, summed over XLA's threads, so the sum exceeds wall time when two thunks "
        "run at once; PyTorch: `torch.profiler` self CPU time per aten op, whose convolution "
        "backward computes input and kernel gradients in one op). From `bench/profile_step.py`.",
        "",
    ]
    for model, spec in MODELS.items():
        if model not in result["profile"]:
            continue
        prof = result["profile"][model]
        labels = [k for k in prof if "ms_per_step" in prof[k]]
        rows = []
        for cat in profile_step.CATEGORIES:
            vals = [prof[k]["ms_per_step"].get(cat) for k in labels]
            if any(v and v >= 0.05 for v in vals):
                rows.append([cat] + [f"{v:.1f}" if v else "–" for v in vals])
        rows.append(["**sum**"] + [f"{sum(prof[k]['ms_per_step'].values()):.1f}" for k in labels])
        lines += [f"**{spec['label']}**", "", common.md_table(["operation"] + labels, rows), ""]
    lines += [
        "### What was tried on the JAX side",
        "",
        "Each attempt is a worker process with the given `XLA_FLAGS` (or config change); on the "
        "default model, one worker per attempt (10 timed steps) in one random order, on "
        "ResNet-18 the headline runs above. 'loss Δ' is the largest difference "
        "of the first three losses from the default's (same init, same batch): a check that the "
        "option computes the same thing.",
        "",
    ]
    for key, model in (("default", "default"), ("resnet18", "resnet18")):
        if key == "resnet18" and "attempts_resnet18" not in result:
            continue
        attempts = (
            result["attempts"]["default"] if key == "default" else result["attempts_resnet18"]
        )
        base = attempts[JAX_ATTEMPTS[0][0]]
        rows = []
        for label in [a for a, _, _ in JAX_ATTEMPTS if a in attempts]:
            p = attempts[label]
            flags = dict((a, f) for a, f, _ in JAX_ATTEMPTS).get(label, "")
            extra = dict((a, e) for a, _, e in JAX_ATTEMPTS).get(label, [])
            change = " ".join(filter(None, [f"`{flags}`" if flags else "", " ".join(extra)]))
            if "step_ms" not in p:
                rows.append([label, change or "–", "failed", "", "", ""])
                continue
            delta = max(abs(a - b) for a, b in zip(p["losses"], base["losses"], strict=True))
            rows.append([
                label,
                change or "–",
                _ms(p),
                f"{p['step_ms'] / base['step_ms']:.2f}×",
                f"{p['cpu_ms']:.0f}",
                f"{delta:.0e}",
            ])  # fmt: skip
        lines += [
            f"**{MODELS[model]['label']}**",
            "",
            common.md_table(
                ["attempt", "change", "step ms", "vs default", "CPU ms", "loss Δ"], rows
            ),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        return worker_main(sys.argv[1:])
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one round (development)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--no-write", action="store_true", help=common.NO_WRITE_HELP)
    args = parser.parse_args()
    result = measure(args.quick, tuple(args.models.split(",")))
    text = render(result)
    if not args.no_write:
        common.publish("vs_torch", result, text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
