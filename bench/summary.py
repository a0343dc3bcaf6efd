"""The summary at the top of BENCHMARKS.md: one row per headline measurement, read from the
benchmark families' JSON results (bench/results/*.json). `make bench` (`bench/run_all.py`)
writes it after its families, `make reproduce` after section 5."""

import json

from bench import common, install_footprint, reproduce_fashion_analysis, table1


def _load(name: str) -> dict | None:
    path = common.RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def summary(elapsed: dict[str, float] | None = None) -> str:
    """The summary section from the families' JSON results (elapsed: minutes of the last
    `make bench`, read back from bench/results/run_all.json when not given)."""
    if elapsed is None:
        saved = _load("run_all") or {}
        elapsed = saved.get("elapsed", {})
    m = common.machine()
    lines = [
        "## Summary",
        "",
        common.machine_table(m),
        "",
        "The machine is a 2-core VM that other jobs shared while these ran (see each section's "
        "load average): wall times carry that noise; ratios are measured within one run, "
        "interleaved, and CPU times are given where they help.",
        "",
    ]
    rows = []
    o = _load("overhead")
    if o:
        f = o["variants"]["full"]
        rows.append([
            "1. full recipe / bare step",
            f"{f['wall_ratio'][0]:.3f}× wall, {f['cpu_ratio'][0]:.3f}× CPU",
            "≤ 1.02×",
        ])  # fmt: skip
        nnx = o["variants"].get("full, Flax NNX")
        if nnx:
            rows.append([
                "1. the full step in Flax NNX / in linen",
                f"{nnx['wall_ratio_vs_full'][0]:.3f}× wall, {nnx['cpu_ratio_vs_full'][0]:.3f}× CPU",
                "≤ 1.02×",
            ])  # fmt: skip
    t = _load("vs_torch")
    if t:
        for model in ("default", "resnet18"):
            h = t["headline"][model]
            torch_best = min(
                (p["step_ms"] for k, p in h.items() if k.startswith("PyTorch") and "step_ms" in p),
                default=float("nan"),
            )
            for label in (
                "JAX, default XLA:CPU",
                "JAX, Eigen convolutions",
                "JAX, bfloat16 + Eigen convolutions",
            ):
                p = h.get(label, {})
                if "step_ms" in p:
                    rows.append([
                        f"2. {model} model: {label} / fastest PyTorch eager",
                        f"{p['step_ms']:.0f} ms / {torch_best:.0f} ms = "
                        f"{p['step_ms'] / torch_best:.2f}×",
                        "≤ 1×",
                    ])  # fmt: skip
    ld = _load("loader")
    if ld:
        rows.append([
            "3. loader / train step (images/s)",
            f"{ld['loader_images_per_s']:.0f} / {ld['step_images_per_s']:.0f} = "
            f"{ld['ratio']:.0f}×",
            "≥ 5×",
        ])  # fmt: skip
    r = _load("runners")
    if r:
        cases = r["cases"]

        def step(key):
            return common.median(cases[key]["step"]) if "step" in cases.get(key, {}) else None

        for n in (1, 2):
            a, b = step(f"pmap/{n}"), step(f"shard_map/{n}")
            if a and b:
                rows.append([f"4. shard_map / pmap step, {n} device(s)", f"{b / a:.2f}×", "–"])
        jit = [(step(f"jit/{n}"), step(f"pmap/{n}")) for n in (1, 2)]
        if all(a and b for a, b in jit):
            rows.append([
                "4. jit / pmap step, 1 / 2 device(s)",
                " / ".join(f"{a / b:.2f}×" for a, b in jit),
                "–",
            ])  # fmt: skip
    rp = _load("reproduce")
    if rp:
        table = table1.by_name(rp["results"])

        def mean(name):
            xs = [r["test_error_precise_bn"] for r in table.get(name, [])]
            return f"{sum(xs) / len(xs):.1f}" if xs else "–"

        for suffix, label in (("", "γ = 0"), (", γ=1", "γ = 1")):
            rows.append([
                f"5. Table 1 test error %, {label} (base / no / constant / gradual warmup)",
                " / ".join(mean(n + suffix) for n in table1.ROW_NAMES),
                "–",
            ])  # fmt: skip
        rows.append(["5. `make reproduce` time", f"{rp['elapsed_s'] / 60:.1f} min", "≤ 20 min"])
    inp = _load("input")
    if inp:
        runs = inp["loader"]

        def images_per_cpu_second(kind):
            return 1e3 / common.median(
                [r["cpu_ms_per_image"] for r in runs if r["kind"] == kind and r["cores"] == 1]
            )

        def wall(kind, cores):
            return common.median(
                [r["images_per_s"] for r in runs if r["kind"] == kind and r["cores"] == cores]
            )

        rows.append([
            "6. ImageNet input per core: recipe / Flax example's tf.data (images per CPU-s)",
            f"{images_per_cpu_second('processes'):.0f} / {images_per_cpu_second('peer'):.0f} = "
            f"{images_per_cpu_second('processes') / images_per_cpu_second('peer'):.2f}×",
            "≥ 1.0×",
        ])  # fmt: skip
        rows.append([
            "6. ImageNet input, 1 → 2 worker processes (images/s)",
            f"{wall('processes', 2) / wall('processes', 1):.2f}×",
            "≥ 1.8×",
        ])  # fmt: skip
        transfer = inp["stages"]["transfer"]
        rows.append([
            "6. bytes per image to the device, float32 before / uint8",
            f"{transfer['float32']['bytes_per_image'] / transfer['uint8']['bytes_per_image']:.0f}×",
            "4×",
        ])  # fmt: skip
    pb = _load("precise_bn")
    if pb:
        by_epoch = {row["epoch"]: row for row in pb["rows"]}
        early = [by_epoch[e] for e in (2.0, 3.0) if e in by_epoch]
        rows.append([
            "7. default run, test accuracy at epochs 2 / 3: BN running averages / precise BN "
            "(8 batches)",
            " / ".join(f"{r['running']:.1%}" for r in early) + " vs "
            + " / ".join(f"{r['N=8']:.1%}" for r in early),
            "–",
        ])  # fmt: skip
    fashion = _load("reproduce_fashion")
    if fashion:
        table = table1.by_name(fashion["results"], "table1")
        errors = {n: [r["test_error_precise_bn"] for r in table[n]] for n in table}
        means = {n: sum(errors[n]) / len(errors[n]) for n in table1.ROW_NAMES if errors.get(n)}
        analysis = reproduce_fashion_analysis.analyse(fashion)
        rows.append([
            f"8. Fashion-MNIST Table 1 test error % (base / no / constant / gradual warmup, "
            f"k = {fashion['k']})",
            " / ".join(f"{means[n]:.2f}" if n in means else "–" for n in table1.ROW_NAMES),
            "gradual within 0.5 pp of base",
        ])  # fmt: skip
        if analysis.get("b_noise"):
            rows.append([
                "8. Fashion-MNIST kn* (SGD, gradual warmup) / B_noise on the base run",
                f"{analysis['kn_star']} / {analysis['b_noise']['mean']:.0f}",
                "–",
            ])  # fmt: skip
        rows.append([
            "8. `make reproduce-fashion` time", f"{fashion['elapsed_s'] / 60:.1f} min", "≤ 45 min"
        ])  # fmt: skip
    warmup = _load("warmup_reasons")
    if warmup:
        errors, saved = warmup["headline"]["test_error"], warmup["headline"]["edge_saves_steps"]
        rows.append([
            "10. test error %, kn = 256, γ = 1, 3 seeds (no / constant / gradual warmup)",
            " / ".join(f"{errors[w]:.1f}" if w in errors else "–"
                       for w in ("none", "constant", "gradual")),
            "–",
        ])  # fmt: skip
        rows.append([
            "10. warmup steps the stability-edge start saves at equal test error",
            "–" if saved is None else str(saved),
            "–",
        ])  # fmt: skip
        rows.append([
            "10. `make warmup-reasons` time", f"{warmup['elapsed_s'] / 60:.1f} min", "≤ 45 min"
        ])  # fmt: skip
    footprint = _load("install_footprint")
    if footprint:
        counted = list(footprint["packages"].values())
        reference, core = len(counted[0]), len(counted[1])
        rows.append([
            "11. core install: packages besides the project / jax, flax, optax, chex, numpy's",
            f"{core} / {reference}",
            f"≤ {reference} + {install_footprint.EXTRA_PACKAGES_ALLOWED}",
        ])  # fmt: skip
        seconds = footprint["import_s"]
        heavy = ", ".join(footprint["heavy_imported"]) or "none"
        rows.append([
            "11. `import recipe`, core install (median s) / `import jax` alone; extras imported",
            f"{common.median(seconds['recipe']):.2f} / {common.median(seconds['jax']):.2f}; "
            f"{heavy}",
            "none of TensorFlow, TFDS, grain, OpenCV, matplotlib",
        ])  # fmt: skip
    lines += [common.md_table(["measurement", "result", "target"], rows), ""]
    if elapsed:
        lines.append(
            "Last `make bench`: "
            + ", ".join(f"{k} {v / 60:.1f} min" for k, v in elapsed.items())
            + f"; total {sum(elapsed.values()) / 60:.1f} min."
        )
    return "\n".join(lines)
