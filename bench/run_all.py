"""`make bench`: runs benchmark families 1–4, 6 and 7 and rewrites their sections of
BENCHMARKS.md.

Each family is its own command too (`python -m bench.overhead`, `bench.vs_torch`,
`bench.loader`, `bench.runners`, `bench.input`, `bench.precise_bn`); this driver runs them one
after another as subprocesses under `timeout -s KILL`, then writes the summary at the top of
BENCHMARKS.md from their JSON results (bench/results/*.json; `bench/summary.py`). Section 5 is
`make reproduce` (bench/reproduce.py).

    python -m bench.run_all [--only overhead,loader]
"""

import argparse
import json
import subprocess
import sys
import time

from bench import common, summary

FAMILIES = {
    # name: (argv, timeout in s)
    "overhead": (["-m", "bench.overhead", "--rounds", "100"], 2400),
    "loader": (["-m", "bench.loader"], 600),
    "runners": (["-m", "bench.runners"], 1200),
    "vs_torch": (["-m", "bench.vs_torch"], 2400),
    "input": (["-m", "bench.input"], 1500),
    "precise_bn": (["-m", "bench.precise_bn"], 1800),
}
SECTIONS = (
    "summary",
    "overhead",
    "vs_torch",
    "loader",
    "runners",
    "reproduce",
    "input",
    "precise_bn",
)


def ensure_skeleton() -> None:
    """BENCHMARKS.md with every section's markers, in order (so sections land in order)."""
    path = common.BENCHMARKS_MD
    content = path.read_text() if path.exists() else common.HEADER
    for name in SECTIONS:
        if f"<!-- BEGIN {name} -->" not in content:
            content = content.rstrip() + f"\n\n<!-- BEGIN {name} -->\n<!-- END {name} -->\n"
    path.write_text(content)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=",".join(FAMILIES))
    args = parser.parse_args()
    ensure_skeleton()
    elapsed = {}
    failed = []
    for name in args.only.split(","):
        argv, timeout = FAMILIES[name]
        print(f"== {name}: {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        cmd = ["timeout", "-s", "KILL", str(timeout), common.PYTHON, *argv]
        proc = subprocess.run(cmd, cwd=common.ROOT, env=common.worker_env())
        elapsed[name] = time.perf_counter() - t0
        print(f"== {name}: exit {proc.returncode}, {elapsed[name]:.0f} s", flush=True)
        if proc.returncode:
            failed.append(name)
    common.RESULTS.mkdir(exist_ok=True)
    (common.RESULTS / "run_all.json").write_text(json.dumps({"elapsed": elapsed}))
    common.update_section("summary", summary.summary(elapsed))
    print(f"BENCHMARKS.md updated; total {sum(elapsed.values()):.0f} s")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
