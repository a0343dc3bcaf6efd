"""What `bench/device.py` measures at which sizes (`GPU`, and `SMOKE` for the CPU), and
BENCHMARKS.md §9's text from its measurements."""

import dataclasses
import json
import pathlib

from bench import common

SECTION = "device"
COMMAND = "make bench-device"
HOW_TO_BRING = (
    "what it lacks travels as wheels: `make device-wheels` where there is network, then the "
    "working tree with .whl/"
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each part runs: the GPU run's sizes, or the smoke run's tiny ones.

    Attributes:
      model, width, stage_sizes, image: the network of parts 1–2 (a `recipe.models` name, its
        first stage's width, its blocks per stage (None: the model's own), the square input
        side).
      max_batch, min_batch: part 1 starts at max_batch and halves while a side runs out of
        device memory, down to min_batch.
      default_overrides: dotted overrides of configs/default.py for part 2's second pair.
      rounds, steps, default_steps: part 1's rounds, and steps per round of each ResNet step
        and of each default-config step.
      dataset, input_image, input_batch, workers, input_seconds: part 3's dataset, crop side,
        batch, worker counts and seconds timed per count (after a warm-up of 2 batches per
        worker).
      train_overrides: part 4's `--config.*` flags on top of configs/default.py.
      budgets: seconds each part may take: 'steps', 'input' (its dataset's preparation, which
        starts with part 1, included) and 'train'.
    """

    model: str
    width: int
    stage_sizes: tuple[int, ...] | None
    image: int
    max_batch: int
    min_batch: int
    default_overrides: dict
    rounds: int
    steps: int
    default_steps: int
    dataset: str
    input_image: int
    input_batch: int
    workers: tuple[int, ...]
    input_seconds: float
    train_overrides: tuple[str, ...]
    budgets: dict


GPU = Sizes(
    model="resnet50",
    width=64,
    stage_sizes=None,
    image=224,
    max_batch=256,
    min_batch=16,
    default_overrides={},
    rounds=5,
    steps=10,
    default_steps=40,
    dataset="synthetic_imagenet",
    input_image=224,
    input_batch=128,
    workers=(1, 2, 4, 8, 16),
    input_seconds=3.0,
    train_overrides=(),
    budgets={"steps": 290, "train": 100, "input": 75},
)
SMOKE = Sizes(
    model="resnet8",
    width=4,
    # One stage of one block, as the tests' tiny runs: its steps compile in about half the time
    # of resnet8's three stages, and compiling is most of what a smoke run's step server does.
    stage_sizes=(1,),
    image=16,
    max_batch=8,
    min_batch=8,
    # The default config's pair at the smoke run's tiny model, so that its code path runs too.
    default_overrides={
        "model": "resnet8",
        "stage_sizes": (1,),
        "num_filters": 4,
        "image_size": 14,
        "batch_size": 8,
    },
    rounds=2,
    steps=2,
    default_steps=2,
    dataset="synthetic_imagenet_small",
    input_image=32,
    input_batch=8,
    workers=(1, 2),
    input_seconds=0.3,
    train_overrides=(
        "--config.model=resnet8",
        "--config.stage_sizes=(1,)",
        "--config.num_filters=4",
        "--config.image_size=14",
        "--config.batch_size=1000",
        "--config.eval_batch_size=1000",
        "--config.num_epochs=2",
        "--config.optimizer.warmup_epochs=0.5",
        "--config.optimizer.decay_epochs=(1.5,)",
        "--config.bn.precise_batches=0",
    ),
    budgets={"steps": 600, "train": 600, "input": 600},
)


def _ratio(times: dict, name: str, baseline: str, invert: bool = False) -> str:
    if name not in times or baseline not in times or not times[name]:
        return "–"
    mid, low, high = common.paired_ratio(times, name, baseline)
    if invert:
        mid, low, high = 1 / mid, 1 / high, 1 / low
    return f"{mid:.2f}× [{low:.2f}, {high:.2f}]"


def render(result: dict, sizes: Sizes) -> str:
    m, s = result["machine"], result["steps"]
    jax_facts, torch_facts = s["ready"].get("jax", {}), s["ready"].get("torch", {})
    lines = [
        "## 9. On a GPU: ResNet-50 against PyTorch, the recipe's overhead, JPEG input, the "
        "default run",
        "",
    ]
    if result["smoke"]:
        lines += [
            "**Smoke run** (`python -m bench.device --smoke`): the same code at tiny sizes on "
            "the CPU, to prove the code path; not a measurement.",
            "",
        ]
    lines += [
        f"Re-run: `{COMMAND}` on the GPU machine ({HOW_TO_BRING}); "
        f"{result['total_s'] / 60:.1f} min on {m['date']}.",
        "",
        common.md_table(
            ["", ""],
            [
                ["GPU", m.get("gpu", "none")],
                ["driver (its CUDA)", f"{m.get('driver', '–')} ({m.get('driver_cuda', '–')})"],
                ["JAX device", jax_facts.get("device", "–")],
                [
                    "jax, jaxlib, CUDA plugin",
                    f"{jax_facts.get('jax', m['jax'])}, "
                    f"{jax_facts.get('jaxlib', m['jaxlib'])}, {jax_facts.get('cuda_plugin')}",
                ],
                [
                    "torch (CUDA, cuDNN)",
                    f"{torch_facts.get('torch', m['torch'])} "
                    f"({torch_facts.get('torch_cuda')}, {torch_facts.get('cudnn')})",
                ],
                ["CPU, cores", f"{m['cpu']}, {m['cores']}"],
                ["memory, Python", f"{m.get('memory', '?')}, {m['python']}"],
                ["load average before, after", f"{m['load_before']}; {m['load_after']}"],
            ],
        ),  # fmt: skip
        "",
        *_render_steps(result, sizes),
        *_render_input(result, sizes),
        *_render_train(result),
    ]
    failures = dict(s["failed"])
    if "torch_skipped" in result:
        failures["torch"] = result["torch_skipped"]
    if failures:
        lines += ["", "Not measured:", ""]
        lines += [f"- {k}: {v.splitlines()[0][:300]}" for k, v in failures.items()]
    return "\n".join(lines)


def _render_steps(result: dict, sizes: Sizes) -> list[str]:
    s = result["steps"]
    times, batch = s["steps"], s["batch"]
    jax_facts, torch_facts = s["ready"].get("jax", {}), s["ready"].get("torch", {})
    labels = {
        "jax full/float32": "JAX, the recipe's full step, float32",
        "torch full/float32": "PyTorch, float32",
        "jax full/bfloat16": "JAX, the recipe's full step, bfloat16 compute",
        "torch full/bfloat16": "PyTorch, bfloat16 autocast",
        "jax bare/float32": "JAX, bare step, float32",
        "jax jit/float32": "JAX, the full step on the global batch (jit runner), float32",
        "jax default full": "JAX, configs/default.py's full step",
        "jax default bare": "JAX, configs/default.py's bare step",
    }
    rows = []
    for key, label in labels.items():
        if not times.get(key):  # not built, or no round completed (its failure is listed)
            continue
        fw, name = key.split(" ", 1)
        facts = jax_facts if fw == "jax" else torch_facts
        step_s = common.median(times[key])
        n = batch if "default" not in key else None
        compiled = torch_facts.get("compiled", {}).get(name.split("/")[-1]) if fw == "torch" else ""
        rows.append([
            label + (f", {compiled}" if compiled else ""),
            f"{1e3 * step_s:.1f}",
            f"{n / step_s:,.0f}" if n else "–",
            f"{facts['first_call_s'][name]:.1f}",
        ])  # fmt: skip
    stages = "" if sizes.stage_sizes is None else f" with stages {sizes.stage_sizes}"
    model = f"{sizes.model}{stages}, width {sizes.width}, {sizes.image}²"
    return [
        f"### 1. Train step: {model}, batch {batch}, one device",
        "",
        f"The recipe's full step (`train.steps.train_step`, `configs/imagenet_resnet50_goyal.py` "
        "with BN statistics per device, pmap runner) against "
        f"{torch_facts.get('model_source', 'PyTorch (not run)')} with the same recipe "
        "(`bench/device_steps.py`): SGD Nesterov, no weight decay on BN, label smoothing 0.1, "
        "warmup + step schedule, channels-last, cuDNN autotuning, TF32 float32 matmuls on both "
        "sides. Fixed batch of float32 images on the device; a step runs until its loss is "
        f"ready. {s['rounds']} interleaved rounds of {sizes.steps} steps of each "
        f"(configs/default.py's: {sizes.default_steps}); step time = median over rounds of each "
        "round's median; ratios round by round with a 95% bootstrap interval. The largest "
        f"power-of-two batch up to {sizes.max_batch} that both sides fit. The JPEG dataset of "
        "part 3 was "
        "being prepared (one core) while these ran.",
        "",
        common.md_table(["step", "ms", "images/s", "first call s (compiling)"], rows),
        "",
        f"**JAX / PyTorch images/s: float32 "
        f"{_ratio(times, 'jax full/float32', 'torch full/float32', invert=True)}, bfloat16 "
        f"{_ratio(times, 'jax full/bfloat16', 'torch full/bfloat16', invert=True)}.**",
        "",
        "### 2. The recipe's overhead on the device",
        "",
        f"Full step / bare step (as §1 on the CPU), same rounds: {sizes.model} float32 "
        f"**{_ratio(times, 'jax full/float32', 'jax bare/float32')}**; the same step under "
        f"the jit runner / under pmap **{_ratio(times, 'jax jit/float32', 'jax full/float32')}"
        "**; configs/default.py's "
        f"model ({jax_facts.get('default_model', '–')}) "
        f"**{_ratio(times, 'jax default full', 'jax default bare')}**.",
        "",
    ]


def _render_input(result: dict, sizes: Sizes) -> list[str]:
    r = result["input"]
    lines = [
        "### 3. JPEG input path",
        "",
        f"`recipe.data.train_batches` over `{sizes.dataset}` (prepared on this machine), "
        f"batches of {sizes.input_batch} uint8 crops at {sizes.input_image}², as the trainer "
        "takes them, consumed as fast as they come; each worker count in its own process, "
        f"timed for {sizes.input_seconds:g} s after 2 batches per worker, not pinned to cores.",
        "",
    ]
    if "error" in r:
        return lines + [f"Not measured: {r['error']}.", ""]
    base = next((run["images_per_s"] for run in r["runs"] if run["workers"] == 1), None)
    rows = [
        [run["workers"], f"{run['images_per_s']:,.0f}",
         f"{run['images_per_s'] / base:.2f}×" if base else "–"]
        for run in r["runs"]
    ]  # fmt: skip
    rows += [[w, e, ""] for w, e in r["errors"].items()]
    return lines + [common.md_table(["workers", "images/s", "× 1 worker"], rows), ""]


def _render_train(result: dict) -> list[str]:
    t = result["train"]
    final = t["final_eval"]
    outcome = (
        f"test accuracy **{100 * final['accuracy']:.2f}%**, loss {final['loss']:.4f} after "
        f"{final['step']} steps"
        if final
        else "no evaluation was written"
    )
    status = "" if t["returncode"] == 0 else f" It exited with status {t['returncode']}."
    return [
        "### 4. configs/default.py end to end",
        "",
        f"`{t['command']}` (data prepared before): **{t['wall_s']:.0f} s** wall, from the "
        f"command to its exit, compilation included; {outcome}.{status}",
    ]


def publish(result: dict, text: str, out: pathlib.Path | None) -> None:
    """bench/results/device.json and §9 of BENCHMARKS.md, or both under `out`."""
    if out is None:
        common.publish(SECTION, result, text)
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{SECTION}.json").write_text(json.dumps(result, indent=1, default=str))
    common.update_section(SECTION, text, out / "BENCHMARKS.md")
