"""9. The recipe on a GPU machine, in one command: ResNet-50's train step against PyTorch, the
recipe's overhead, the JPEG input path on many cores, `configs/default.py` end to end.

1. ResNet-50 at 224² on one GPU, float32 and bfloat16 compute, at the largest power-of-two batch
   up to 256 that fits both sides: the recipe's full step under the trainer's pmap runner
   against torchvision's ResNet-50 trained with the same recipe in PyTorch
   (`bench/device_steps.py` says how each side is built). Each side is a server process that
   compiles its steps once; rounds run every step a few times in a fresh random order; a
   step's time is the median over rounds of its round's median, and the ratio is taken round by
   round (`common.paired_ratio`, 95% bootstrap interval).
2. The recipe's overhead there, as BENCHMARKS §1 measures it on the CPU: the full step over the
   bare step (`bench/jax_steps.py`), in the same rounds, for ResNet-50 and for the default
   config's model.
3. The ImageNet JPEG input path (`recipe.data.train_batches` over `synthetic_imagenet`,
   prepared on the machine while part 1 runs, on one core) at 1, 2, 4, 8 and 16 worker
   processes: images/s, and the scaling from one worker.
4. `python -m train --config configs/default.py` in a subprocess: wall time, final accuracy.

Each part has a time budget (together under 8 minutes on an NVIDIA H200 host with 16 cores),
is stopped at it, and reports what it measured by then. Before anything runs, the imports are
checked: what is missing is named in one line with the way to bring it. It never downloads.

    python -m bench.device                      # on the GPU machine: writes BENCHMARKS.md §9
    python -m bench.device --smoke --out DIR    # the same code at tiny sizes, on the CPU
    python -m bench.device wheels .whl          # (with network) what the GPU machine lacks

`make device-wheels` and `make bench-device` run the last and the first.
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import random
import re
import subprocess
import sys
import tempfile
import time

from bench import common

SECTION = "device"
COMMAND = "make bench-device"
HOW_TO_BRING = (
    "what it lacks travels as wheels: `make device-wheels` where there is network, then the "
    "working tree with .whl/"
)

# What the benchmark imports that the GPU machine (Python 3.12, jax with CUDA 13, torch,
# torchvision, flax, optax, orbax, chex, OpenCV, tensorboard, matplotlib, etils, absl, tqdm,
# Pillow) does not have, each with the requirement that brings it: the project's data packages
# and what they import here, found by running this benchmark's code with only those packages.
# The versions are the ones the project's tests run with. promise has no wheel on the index:
# `wheels` builds one (pure Python).
WHEELS = {
    "tensorflow_datasets": "tensorflow-datasets==4.9.10",
    "grain": "grain==0.2.18",
    "array_record": "array-record==0.8.6",
    "ml_collections": "ml-collections==1.1.0",
    "simplejpeg": "simplejpeg==1.9.0",
    "mlxtend": "mlxtend==0.25.0",
    "importlib_resources": "importlib_resources==7.1.0",
    "promise": "promise==2.3",
    "tensorflow_metadata": "tensorflow-metadata==1.21.0",
    "toml": "toml==0.10.2",
    "wrapt": "wrapt==2.5.2",
    "immutabledict": "immutabledict==4.3.1",
    "tree": "dm-tree==0.1.10",
    "attrs": "attrs==26.1.0",
    "cloudpickle": "cloudpickle==3.1.3",
    "portpicker": "portpicker==1.6.0",
    "psutil": "psutil==7.2.2",
    "termcolor": "termcolor==3.3.0",
}
BUILT_HERE = ("promise",)
WHEEL_PYTHON = "3.12"
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
DEVICE_SITE = "/tmp/device-site"
# Installed on the GPU machine (not brought along); torch's pair is optional off the GPU.
INSTALLED_THERE = {
    "jax": "jax[cuda13]",
    "flax": "flax",
    "optax": "optax",
    "orbax.checkpoint": "orbax-checkpoint",
    "chex": "chex",
    "cv2": "opencv-python-headless",
    "tensorboard": "tensorboard",
    "matplotlib": "matplotlib",
    "etils": "etils",
    "absl": "absl-py",
    "tqdm": "tqdm",
    "PIL": "pillow",
}
TORCH = {"torch": "torch", "torchvision": "torchvision"}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each part runs: the GPU run's sizes, or the smoke run's tiny ones.

    Attributes:
      model, width, image: the network of parts 1–2 (a `recipe.models` name, its first stage's
        width, the square input side).
      max_batch, min_batch: part 1 starts at max_batch and halves while a side runs out of
        device memory, down to min_batch.
      default_overrides: dotted overrides of configs/default.py for part 2's second pair (None:
        no second pair, where the first is as small).
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
    image: int
    max_batch: int
    min_batch: int
    default_overrides: dict | None
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
    image=16,
    max_batch=8,
    min_batch=8,
    default_overrides=None,  # nothing to compile twice: the first pair is as small
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


# ---------------------------------------------------------------------------------------------
# Imports, wheels, machine.


def missing_imports(smoke: bool) -> dict[str, str]:
    """{import name: requirement} of what cannot be imported (torch's pair only off --smoke)."""
    wanted = {**INSTALLED_THERE, **WHEELS, **({} if smoke else TORCH)}
    missing = {}
    for name, requirement in wanted.items():
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a dotted name whose parent is missing
            found = False
        if not found:
            missing[name] = requirement
    return missing


def missing_line(missing: dict[str, str]) -> str:
    """The one line that names what is missing and how to bring it."""
    brought = [r for n, r in missing.items() if n in WHEELS]
    other = [r for n, r in missing.items() if n not in WHEELS]
    how = []
    if brought:
        how.append(
            "run `make device-wheels` where there is network (wheels for Python "
            f"{WHEEL_PYTHON} into .whl/), bring .whl/ with the working tree and run "
            f"`{COMMAND}`, which installs them with `pip install --no-index --no-deps --target "
            f"{DEVICE_SITE} .whl/*.whl` and puts {DEVICE_SITE} on PYTHONPATH"
        )
    if other:
        how.append(f"`pip install {' '.join(other)}` (expected on the GPU machine)")
    return f"bench.device: missing {', '.join(missing.values())}: " + "; ".join(how) + "."


def download_wheels(directory: str) -> None:
    """Fetches every `WHEELS` requirement as a wheel for the GPU machine's Python into
    `directory` (building the pure-Python ones that have no wheel on the index)."""
    platforms = [flag for p in WHEEL_PLATFORMS for flag in ("--platform", p)]
    binary = [r for n, r in WHEELS.items() if n not in BUILT_HERE]
    built = [r for n, r in WHEELS.items() if n in BUILT_HERE]
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", WHEEL_PYTHON,
         *platforms, "--platform", "any", "-d", directory, *binary],
        check=True,
    )  # fmt: skip
    subprocess.run([*pip, "wheel", "--no-deps", "-w", directory, *built], check=True)


def _nvidia_smi() -> dict[str, str]:
    """GPU name, memory, driver and the driver's CUDA version (empty without nvidia-smi)."""
    try:
        query = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
             "--format=csv,noheader"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout  # fmt: skip
        banner = subprocess.run(
            ["nvidia-smi"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    name, memory, driver = (f.strip() for f in query.splitlines()[0].split(","))
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", banner)
    return {
        "gpu": f"{name} ({memory}; {len(query.splitlines())} on the machine)",
        "driver": driver,
        "driver_cuda": cuda[1] if cuda else "?",
    }


# ---------------------------------------------------------------------------------------------
# Parts 1 and 2: the step servers.


class StepServer:
    """A `bench/device_steps.py` process (under `timeout -s KILL`), asked for timed steps."""

    def __init__(self, framework: str, argv: list[str], timeout: float, log: pathlib.Path):
        self.framework, self.log = framework, log
        env = {**common.worker_env(), "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # room for torch
        self.proc = subprocess.Popen(
            ["timeout", "-s", "KILL", str(max(int(timeout), 1)), common.PYTHON,
             "-m", "bench.device_steps", framework, *argv],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
            cwd=common.ROOT, env=env,
        )  # fmt: skip

    def read(self) -> dict:
        """The server's next JSON line; RuntimeError (with its log's tail) if it ended."""
        while line := self.proc.stdout.readline():
            if line.startswith("{"):
                return json.loads(line)
        code = self.proc.wait()
        tail = self.log.read_text()[-1500:]
        killed = " (killed at its time budget)" if code in (-9, 137) else ""
        raise RuntimeError(f"{self.framework} step server exited with {code}{killed}: {tail}")

    def run(self, name: str, steps: int) -> list[float]:
        self.proc.stdin.write(f"{name} {steps}\n")
        self.proc.stdin.flush()
        return self.read()["seconds"]

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def measure_steps(
    sizes: Sizes, frameworks: tuple[str, ...], budget: float, logs: pathlib.Path
) -> dict:
    """Parts 1 and 2: both servers at the largest batch that fits, then interleaved rounds."""
    deadline = time.monotonic() + budget
    batch, failed = sizes.max_batch, {}
    argv = ["--model", sizes.model, "--width", str(sizes.width), "--image", str(sizes.image)]
    if sizes.default_overrides is not None:
        argv += ["--default-overrides", json.dumps(sizes.default_overrides)]
    while True:
        servers, ready, failed, oom = {}, {}, {}, False
        for fw in frameworks:
            servers[fw] = StepServer(
                fw, [*argv, "--batch", str(batch)], deadline - time.monotonic(), logs / f"{fw}.log"
            )
        for fw, server in servers.items():
            try:
                message = server.read()
            except RuntimeError as error:
                failed[fw] = str(error)
                continue
            if "oom" in message:
                failed[fw], oom = f"out of memory at batch {batch}: {message['oom']}", True
            else:
                ready[fw] = message
        if oom and batch > sizes.min_batch:
            for server in servers.values():
                server.close()
            batch //= 2
            continue
        break
    steps = {}  # "jax full/float32" → [round medians]
    names = [(fw, name) for fw in ready for name in ready[fw]["first_call_s"]]
    rounds_done, round_s = 0, 0.0
    try:
        for r in range(sizes.rounds):
            if rounds_done and time.monotonic() + 1.5 * round_s > deadline:
                break
            t0 = time.monotonic()
            random.Random(r).shuffle(names)
            for fw, name in names:
                n = sizes.default_steps if name.startswith("default") else sizes.steps
                seconds = servers[fw].run(name, n)
                steps.setdefault(f"{fw} {name}", []).append(common.median(seconds))
            rounds_done += 1
            round_s = time.monotonic() - t0
    except RuntimeError as error:  # a server died mid-round: keep the complete rounds
        failed["rounds"] = str(error)
        steps = {k: v[:rounds_done] for k, v in steps.items()}
    finally:
        for server in servers.values():
            server.close()
    return {"batch": batch, "ready": ready, "failed": failed, "rounds": rounds_done,
            "steps": steps}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Part 3: the JPEG input path.


def prepare(dataset: str, data_dir: str) -> None:
    from recipe.data import prepare_dataset

    prepare_dataset(dataset, data_dir)


def input_worker(args: argparse.Namespace) -> dict:
    """Images/s of `recipe.data.train_batches` (uint8 batches, as the trainer takes them) with
    `args.workers` worker processes, over `args.seconds` after 2 batches per worker."""
    from recipe import data

    spec = data.get_dataset_spec(args.dataset)
    source = data.load_source(args.dataset, spec.train_split, args.data_dir)
    batches = data.train_batches(
        source,
        spec,
        seed=0,
        global_batch=args.batch,
        process_index=0,
        process_count=1,
        local_device_count=1,
        image_size=args.image,
        normalize=False,
        worker_count=args.workers,
    )
    for _ in range(2 * max(args.workers, 1)):
        next(batches)
    count, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < args.seconds or count < 2:
        next(batches)
        count += 1
    return {"workers": args.workers, "images_per_s": count * args.batch / elapsed,
            "batches": count, "seconds": elapsed}  # fmt: skip


def measure_input(sizes: Sizes, data_dir: str, preparing: subprocess.Popen, budget: float) -> dict:
    deadline = time.monotonic() + budget
    try:
        code = preparing.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        preparing.kill()
        return {"error": f"preparing {sizes.dataset} did not finish within the part's budget"}
    if code != 0:
        return {"error": f"preparing {sizes.dataset} failed with exit status {code}"}
    runs, errors = [], {}
    for workers in sizes.workers:
        left = deadline - time.monotonic()
        if left < 5:
            errors[workers] = "not run: the part's time budget was spent"
            continue
        argv = ["-m", "bench.device", "input-worker", "--dataset", sizes.dataset,
                "--data-dir", data_dir, "--workers", str(workers), "--image",
                str(sizes.input_image), "--batch", str(sizes.input_batch), "--seconds",
                str(sizes.input_seconds)]  # fmt: skip
        try:
            runs.append(common.run_worker(argv, timeout=left))
        except RuntimeError as error:
            errors[workers] = str(error).splitlines()[0]
    return {"runs": runs, "errors": errors}


# ---------------------------------------------------------------------------------------------
# Part 4: configs/default.py end to end.


def train_default(sizes: Sizes, data_dir: str, budget: float) -> dict:
    """Runs `python -m train --config configs/default.py` (plus the sizes' overrides) in a
    temporary work dir; its wall time and the last evaluation in its metrics.jsonl."""
    with tempfile.TemporaryDirectory(prefix="bench-device-") as workdir:
        shown = ["python", "-m", "train", "--config", "configs/default.py", "--workdir", "WORKDIR",
                 *sizes.train_overrides]  # fmt: skip
        argv = [common.PYTHON, *shown[1:5], "--workdir", workdir, f"--config.data_dir={data_dir}",
                "--config.progress_bar=False", *sizes.train_overrides]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["timeout", "-s", "KILL", str(max(int(budget), 1)), *argv],
            capture_output=True, text=True, cwd=common.ROOT, env=common.worker_env(),
        )  # fmt: skip
        wall = time.perf_counter() - t0
        metrics = pathlib.Path(workdir) / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        records = [json.loads(line) for line in lines if line.strip()]
    evals = [r for r in records if r.get("kind") == "eval"]
    return {
        "command": " ".join(shown),
        "returncode": proc.returncode,
        "wall_s": wall,
        "final_eval": evals[-1] if evals else None,
        "train_steps": max((r["step"] for r in records), default=0),
        "stderr_tail": proc.stderr[-1500:] if proc.returncode else "",
    }


# ---------------------------------------------------------------------------------------------
# The run and §9.


def _prepare_in_background(
    dataset: str, data_dir: str, timeout: float, log: pathlib.Path
) -> subprocess.Popen:
    """Starts `python -m bench.device prepare dataset` (under `timeout -s KILL`)."""
    argv = [common.PYTHON, "-m", "bench.device", "prepare", dataset, "--data-dir", data_dir]
    return subprocess.Popen(
        ["timeout", "-s", "KILL", str(int(timeout)), *argv],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        cwd=common.ROOT,
        env=common.worker_env(),
    )


def measure(sizes: Sizes, smoke: bool, data_dir: str, logs: pathlib.Path) -> dict:
    started = time.monotonic()
    result: dict = {"smoke": smoke, "machine": {**common.machine(), **_nvidia_smi()}}
    timeout = sizes.budgets["steps"] + sizes.budgets["input"]
    preparing = {  # on one core each, while part 1 runs
        name: _prepare_in_background(name, data_dir, timeout, logs / f"prepare-{name}.log")
        for name in ("mnist5k", sizes.dataset)
    }
    frameworks = ("jax", "torch") if importlib.util.find_spec("torch") else ("jax",)
    if "torch" not in frameworks:
        result["torch_skipped"] = "torch is not installed: the PyTorch half is skipped"
        print(f"bench.device: {result['torch_skipped']}", flush=True)
    print(f"bench.device: parts 1–2, step servers ({', '.join(frameworks)})", flush=True)
    result["steps"] = measure_steps(sizes, frameworks, sizes.budgets["steps"], logs)
    print("bench.device: part 4, configs/default.py end to end", flush=True)
    train_until = time.monotonic() + sizes.budgets["train"]
    try:  # started with part 1: long done, unless something is wrong
        preparing["mnist5k"].wait(timeout=sizes.budgets["train"] / 2)
    except subprocess.TimeoutExpired:
        preparing["mnist5k"].kill()
    result["train"] = train_default(sizes, data_dir, train_until - time.monotonic())
    print(f"bench.device: part 3, input at {sizes.workers} workers", flush=True)
    result["input"] = measure_input(
        sizes, data_dir, preparing[sizes.dataset], sizes.budgets["input"]
    )
    result["total_s"] = time.monotonic() - started
    result["machine"]["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return result


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
        "jax default full": "JAX, configs/default.py's full step",
        "jax default bare": "JAX, configs/default.py's bare step",
    }
    rows = []
    for key, label in labels.items():
        if key not in times:
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
    model = f"{sizes.model}, width {sizes.width}, {sizes.image}²"
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
        f"**{_ratio(times, 'jax full/float32', 'jax bare/float32')}**; configs/default.py's "
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


def main() -> int:
    commands = {"prepare", "input-worker", "wheels"}
    if len(sys.argv) > 1 and sys.argv[1] in commands:
        parser = argparse.ArgumentParser()
        parser.add_argument("command", choices=sorted(commands))
        parser.add_argument("name", nargs="?")
        parser.add_argument("--data-dir")
        parser.add_argument("--dataset")
        parser.add_argument("--workers", type=int)
        parser.add_argument("--image", type=int)
        parser.add_argument("--batch", type=int)
        parser.add_argument("--seconds", type=float)
        args = parser.parse_args()
        if args.command == "prepare":
            prepare(args.name, args.data_dir)
        elif args.command == "input-worker":
            common.emit(input_worker(args))
        else:
            download_wheels(args.name or ".whl")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, on the CPU")
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        help="write device.json and a BENCHMARKS.md with §9 here (default: the repository's; "
        "--smoke without --out writes nothing)",
    )
    parser.add_argument("--data-dir", help="TFDS data dir (default: $TFDS_DATA_DIR or ~/...)")
    args = parser.parse_args()
    missing = missing_imports(args.smoke)
    if missing:
        print(missing_line(missing), file=sys.stderr)
        return 1
    from recipe.data import default_data_dir

    sizes = SMOKE if args.smoke else GPU
    with tempfile.TemporaryDirectory(prefix="bench-device-logs-") as logs:
        result = measure(sizes, args.smoke, args.data_dir or default_data_dir(), pathlib.Path(logs))
    text = render(result, sizes)
    if args.out is not None or not args.smoke:
        publish(result, text, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
