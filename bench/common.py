"""Shared helpers of the benchmarks: machine facts, timing, subprocess workers, BENCHMARKS.md.

Benchmarks that need XLA flags (forced device counts, CPU options) run as worker subprocesses,
because XLA reads `XLA_FLAGS` once, when jax initialises its backend. Every worker runs under
`timeout -s KILL`: a CPU collective that hangs ignores SIGTERM (jax's preemption notifier
catches it). A worker prints one JSON object as its last stdout line.
"""

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
RESULTS = BENCH / "results"
PYTHON = sys.executable


# ---------------------------------------------------------------------------------------------
# Machine and versions.


def machine() -> dict[str, str]:
    """CPU model and cores (lscpu), memory, OS, Python and library versions, date."""
    info: dict[str, str] = {}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(
            (k.strip(), v.strip())
            for k, _, v in (line.partition(":") for line in lscpu.splitlines())
        )
        info["cpu"] = fields.get("Model name", "?")
        info["cores"] = fields.get("CPU(s)", str(os.cpu_count()))
        flags = fields.get("Flags", "").split()
        info["isa"] = ", ".join(
            f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags
        )
    except (OSError, subprocess.CalledProcessError):
        info["cpu"], info["cores"] = platform.processor() or "?", str(os.cpu_count())
    try:
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", pathlib.Path("/proc/meminfo").read_text())[1])
        info["memory"] = f"{mem_kb / 2**20:.0f} GiB"
    except (OSError, TypeError):
        pass
    info["os"] = f"{platform.system()} {platform.release()}"
    info["python"] = platform.python_version()
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "grain", "torch"):
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "not installed"
    info["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    info["load_before"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return info


def machine_table(info: dict[str, str]) -> str:
    keys = (
        "cpu",
        "cores",
        "isa",
        "memory",
        "os",
        "python",
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "numpy",
        "grain",
        "torch",
        "date",
        "load_before",
    )
    labels = {"load_before": "load average (1/5/15 min) at start"}
    rows = [f"| {labels.get(k, k)} | {info[k]} |" for k in keys if k in info]
    return "| | |\n|---|---|\n" + "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# Timing.


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def quartiles(xs: list[float]) -> tuple[float, float]:
    """(25th, 75th) percentiles."""
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def spread(xs: list[float]) -> str:
    """'median (p25–p75)' in ms."""
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return f"{1e3 * median(xs):.1f} ({1e3 * q[0]:.1f}–{1e3 * q[2]:.1f})"


def time_interleaved(
    fns: dict[str, Callable[[], None]], *, rounds: int, steps_per_round: int = 1, seed: int = 0
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and CPU seconds per call of each blocking `fn`, interleaved: each round runs
    every fn `steps_per_round` times, in a fresh random order, so drifts of a shared machine hit
    all variants alike. CPU time (all threads of this process) is what the step costs whatever
    else the machine runs; wall time is what a user waits. Returns (wall, cpu), each
    {name: rounds × steps_per_round times}."""
    rng = random.Random(seed)
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            for _ in range(steps_per_round):
                c0, t0 = time.process_time(), time.perf_counter()
                fns[name]()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    return wall, cpu


def paired_ratio(
    times: dict[str, list[float]], name: str, baseline: str
) -> tuple[float, float, float]:
    """Median over rounds of time[name] / time[baseline] (same round, adjacent in time), with a
    95% bootstrap interval of that median: (median, low, high)."""
    ratios = [a / b for a, b in zip(times[name], times[baseline], strict=True)]
    rng = random.Random(0)
    boots = sorted(median([rng.choice(ratios) for _ in ratios]) for _ in range(2000))
    return median(ratios), boots[50], boots[1949]


# ---------------------------------------------------------------------------------------------
# Worker subprocesses.


def run_worker(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 600) -> dict:
    """Runs `python argv...` under `timeout -s KILL`; returns the JSON of its last stdout line.

    Raises RuntimeError (with the tail of stderr) if it fails or is killed."""
    full_env = {**worker_env(), **(env or {})}
    cmd = ["timeout", "-s", "KILL", str(int(timeout)), PYTHON, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"worker {' '.join(argv)} (env {env}) exited with {proc.returncode}"
            + (" (killed by timeout)" if proc.returncode in (-9, 137) else "")
            + f":\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1])


def worker_env() -> dict[str, str]:
    """This environment with the repository on PYTHONPATH (workers import `bench`, `train`)."""
    paths = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def emit(result: dict) -> None:
    """A worker's result: one JSON line on stdout."""
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# BENCHMARKS.md sections.

HEADER = """# Benchmarks

Measured, not asserted: every number below was written by a script in `bench/` from a real
run on the machine described in its section. Re-run a section with the command given there
(`make bench` re-runs sections 1–4 and 6, `make reproduce` section 5). Unit tests contain no timing.

"""


def update_section(name: str, text: str, path: pathlib.Path = BENCHMARKS_MD) -> None:
    """Replaces the text between `<!-- BEGIN name -->` and `<!-- END name -->` (appends the
    section if it is missing), leaving every other section as it is."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    content = path.read_text() if path.exists() else HEADER
    if begin in content and end in content:
        head, _, rest = content.partition(begin)
        _, _, tail = rest.partition(end)
        content = head + block + tail
    else:
        content = content.rstrip() + "\n\n" + block + "\n"
    path.write_text(content)


NO_WRITE_HELP = "print only: leave bench/results and BENCHMARKS.md as they are"


def publish(name: str, result: dict, text: str) -> None:
    """Saves a section's numbers as bench/results/<name>.json and its text in BENCHMARKS.md."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
    update_section(name, text)


def relative(path: pathlib.Path) -> str:
    """`path` relative to the repository root, as BENCHMARKS.md links it."""
    return str(path.relative_to(ROOT))


def md_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
