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
from bench.device_section import COMMAND, GPU, SMOKE, Sizes, publish, render

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
    if sizes.stage_sizes is not None:
        argv += ["--stage-sizes", ",".join(map(str, sizes.stage_sizes))]
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
