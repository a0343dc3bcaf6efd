"""1. Recipe overhead: one train step with the full recipe vs a bare step, interleaved.

Same model (configs/default.py: resnet20, width 8, MNIST-sized 28×28×1 input), batch (128),
device (one CPU device, the pmap runner the trainer uses by default) and fixed synthetic batch;
the variants are defined in `bench/jax_steps.py`. Each round runs one step of every variant in a
fresh random order; the ratio of a variant is the median over rounds of its time over the bare
step's time in the same round (95% bootstrap interval), for wall-clock and for CPU time.

The large-batch tools get rows of their own: LARS and LAMB, and the gradient noise scale on
one device (where it splits the batch in halves); BatchNorm over groups of devices and the noise
scale's data-parallel form need several devices, so a worker process with 4 forced CPU devices
times them under both runners against the bare and the full step on the same devices.

    python -m bench.overhead [--rounds 100] [--no-checks] [--no-large-batch] [--no-write]
    XLA_FLAGS=--xla_force_host_platform_device_count=4 \
        python -m bench.overhead devices-worker --devices 4 --rounds 40
"""

import argparse
import functools
import sys
import time

import jax

from bench import common, jax_steps
from bench.trainer_api import config_for, runners

# Checks beside the ladder: the full step compiled again (the method's resolution), and the
# full step with the weight decay in the optimizer instead of the loss.
AA_CHECK = "full, compiled again"
DECAY_IN_OPTIMIZER = "full, decay in optimizer"


LABELS = {
    "bare": "bare: `optax.sgd(0.1, momentum=0.9)`, integer-label cross-entropy, γ = 1",
    "+smoothing": "+ label smoothing 0.1 (`recipe.losses.cross_entropy`), Goyal init",
    "+decay_mask": "+ masked weight decay in the loss (`recipe.losses.l2_penalty`), Nesterov",
    "+schedule": "+ warmup/step-decay schedule (`recipe.optim.build_optimizer`)",
    "full": "full recipe: `train.steps.train_step` (+ accuracy, lr and finite-update metrics)",
    AA_CHECK: "A/A check: the full step compiled a second time",
    DECAY_IN_OPTIMIZER: "full, weight decay by `optax.add_decayed_weights` in the optimizer "
    "instead of (λ/2)·Σ‖w‖² in the loss",
    jax_steps.EMA: "+ weight EMA (`recipe.weight_ema`, timm's decay warmup)",
    jax_steps.MIXING: "+ Mixup α 0.2 / CutMix α 1.0 per batch (`recipe.mixup_cutmix`)",
    jax_steps.PRECISE_BN: "one batch of precise-BN statistics (`recipe.precise_bn_estimator`)",
    jax_steps.NNX: "full, the model in Flax NNX (`flax_api='nnx'`: `recipe.nnx` through "
    "`nnx.split`/`nnx.merge`)",
    "lars": "full, LARS (`build_optimizer(name='lars')`: trust ratio per tensor, BN/bias masked)",
    "lamb": "full, LAMB (`build_optimizer(name='lamb')`, decoupled decay in the optimizer)",
    "noise scale": "full + gradient noise scale on one device (`train_step(noise_scale_ema=...)`: "
    "two half-batch gradients, a second backward pass)",
}

# The multi-device rows: 4 forced devices, BN groups of 2.
DEVICES, GROUP_SIZE = 4, 2
DEVICE_LABELS = {
    "bare": "bare (as above)",
    "full": "full recipe, per-device BN",
    "global bn": "full, BN across all 4 devices (`BNScope.across(axis)`)",
    "group bn": f"full, BN over groups of {GROUP_SIZE} devices (pmap: `BNScope.across(axis, "
    "groups)`; shard_map: 2 × 2 mesh)",
    "noise scale": "full + gradient noise scale (one scalar all-reduce of ‖g_local‖²)",
}


def _compile_and_warm(fns: dict, warmup: int) -> dict[str, float]:
    """Runs each stepper once (timing the first call) and `warmup` more times."""
    first_call_s = {}
    for name, stepper in fns.items():
        t0 = time.perf_counter()
        stepper()
        first_call_s[name] = time.perf_counter() - t0
        for _ in range(warmup):
            stepper()
    return first_call_s


def _large_batch_steppers(runner) -> dict:
    """LARS, LAMB and the one-device noise scale: the full step of the default config with one
    change each, resolved as the trainer resolves it."""
    changes = {
        "lars": {"optimizer.name": "lars", "optimizer.nesterov": False},
        "lamb": {"optimizer.name": "lamb", "optimizer.nesterov": False},
        "noise scale": {"noise_scale.enabled": True},
    }
    fns = {}
    for name, overrides in changes.items():
        setup = jax_steps.build(config_for(**overrides))
        batch = jax_steps.synthetic_batch(
            1, setup.resolved.layout.batch_size, setup.image_shape, setup.num_classes
        )
        fns[name] = jax_steps.Stepper(runner, *jax_steps.step_fn("full", setup), batch)
    return fns


def measure(rounds: int, warmup: int, checks: bool, large_batch: bool = True) -> dict:
    config = config_for()
    setup = jax_steps.build(config)
    bare = jax_steps.build(config, zero_init_last_bn=False)
    runner = runners.RUNNERS[config.runner](jax.devices()[:1])
    batch = jax_steps.synthetic_batch(1, config.batch_size, setup.image_shape, setup.num_classes)

    fns = {}
    for variant in jax_steps.VARIANTS:
        fn, state = jax_steps.step_fn(variant, setup, bare)
        fns[variant] = jax_steps.Stepper(runner, fn, state, batch)
    if checks:
        fn, state = jax_steps.step_fn("full", setup)
        fn = functools.partial(fn)  # a new function object: compiled anew
        fns[AA_CHECK] = jax_steps.Stepper(runner, fn, state, batch)
        in_optimizer = jax_steps.build(config, weight_decay_in_loss=False)
        fn, state = jax_steps.step_fn("full", in_optimizer)
        fns[DECAY_IN_OPTIMIZER] = jax_steps.Stepper(runner, fn, state, batch)
    for name in jax_steps.EXTRAS:
        fn, state = jax_steps.extra_fn(name)
        fns[name] = jax_steps.Stepper(runner, fn, state, batch)
    if large_batch:
        fns.update(_large_batch_steppers(runner))
    compile_s = _compile_and_warm(fns, warmup)

    wall, cpu = common.time_interleaved(fns, rounds=rounds)
    result = {
        "machine": common.machine(),
        "config": {
            "model": config.model,
            "num_filters": config.num_filters,
            "image_shape": list(setup.image_shape),
            "batch_size": config.batch_size,
            "runner": config.runner,
            "devices": 1,
            "rounds": rounds,
            "steps_per_epoch": setup.optimizer.schedule.steps_per_epoch,
        },
        "variants": {
            name: {
                "wall_ms": 1e3 * common.median(wall[name]),
                "wall_q": [1e3 * q for q in common.quartiles(wall[name])],
                "cpu_ms": 1e3 * common.median(cpu[name]),
                "wall_ratio": common.paired_ratio(wall, name, "bare"),
                "cpu_ratio": common.paired_ratio(cpu, name, "bare"),
                "first_call_s": compile_s[name],
                **(
                    {
                        "wall_ratio_vs_full": common.paired_ratio(wall, name, "full"),
                        "cpu_ratio_vs_full": common.paired_ratio(cpu, name, "full"),
                    }
                    if name in jax_steps.EXTRAS
                    else {}
                ),
            }
            for name in fns
        },
    }
    if large_batch:
        result["devices"] = common.run_worker(
            ["-m", "bench.overhead", "devices-worker", "--devices", str(DEVICES),
             "--rounds", str(max(rounds * 2 // 5, 5)), "--warmup", str(warmup)],
            env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}"},
            timeout=1800,
        )  # fmt: skip
    return result


def measure_devices(devices: int, rounds: int, warmup: int) -> dict:
    """The multi-device rows, in a process with `devices` forced CPU devices."""
    assert jax.device_count() == devices, (jax.device_count(), devices)
    cases = {
        "full": {},
        "global bn": {"bn.scope": "global"},
        "group bn": {"bn.scope": "group", "bn.group_size": GROUP_SIZE},
        "noise scale": {"noise_scale.enabled": True},
    }
    fns = {}
    for runner_name in ("pmap", "shard_map"):
        bare = jax_steps.build(config_for(runner=runner_name), zero_init_last_bn=False)
        batch = jax_steps.synthetic_batch(
            devices, bare.resolved.layout.batch_size, bare.image_shape, bare.num_classes
        )
        runner = bare.resolved.runner()
        fns[f"{runner_name}/bare"] = jax_steps.Stepper(
            runner, *jax_steps.step_fn("bare", bare, bare), batch
        )
        for case, overrides in cases.items():
            setup = jax_steps.build(config_for(runner=runner_name, **overrides))
            runner = setup.resolved.runner()  # BN groups under shard_map: the 2-D mesh
            fn, state = jax_steps.step_fn("full", setup, axis_name=runner.axis_name)
            fns[f"{runner_name}/{case}"] = jax_steps.Stepper(runner, fn, state, batch)
    first_call_s = _compile_and_warm(fns, warmup)
    wall, cpu = common.time_interleaved(fns, rounds=rounds)
    rows = {}
    for name in fns:
        runner_name = name.split("/")[0]
        rows[name] = {
            "wall_ms": 1e3 * common.median(wall[name]),
            "cpu_ms": 1e3 * common.median(cpu[name]),
            "wall_ratio": common.paired_ratio(wall, name, f"{runner_name}/bare"),
            "cpu_ratio": common.paired_ratio(cpu, name, f"{runner_name}/bare"),
            "cpu_ratio_full": common.paired_ratio(cpu, name, f"{runner_name}/full"),
            "first_call_s": first_call_s[name],
        }
    return {"devices": devices, "group_size": GROUP_SIZE, "rounds": rounds, "variants": rows}


def render(result: dict) -> str:
    m, c = result["machine"], result["config"]
    rows = []
    for name, v in result["variants"].items():
        if name in jax_steps.EXTRAS:
            continue
        wr, cr = v["wall_ratio"], v["cpu_ratio"]
        rows.append([
            LABELS.get(name, name),
            f"{v['wall_ms']:.1f} ({v['wall_q'][0]:.1f}–{v['wall_q'][1]:.1f})",
            f"{wr[0]:.3f} [{wr[1]:.3f}, {wr[2]:.3f}]",
            f"{v['cpu_ms']:.1f}",
            f"{cr[0]:.3f} [{cr[1]:.3f}, {cr[2]:.3f}]",
        ])  # fmt: skip
    full = result["variants"]["full"]
    in_optimizer = result["variants"].get(DECAY_IN_OPTIMIZER)
    extras = [name for name in jax_steps.EXTRAS if name in result["variants"]]
    extra_rows = []
    for name in extras:
        v = result["variants"][name]
        wr, cr = v["wall_ratio_vs_full"], v["cpu_ratio_vs_full"]
        extra_rows.append([
            LABELS.get(name, name),
            f"{v['wall_ms']:.1f}",
            f"{wr[0]:.3f} [{wr[1]:.3f}, {wr[2]:.3f}]",
            f"{v['cpu_ms']:.1f}",
            f"{cr[0]:.3f} [{cr[1]:.3f}, {cr[2]:.3f}]",
        ])  # fmt: skip
    per_epoch = c.get("steps_per_epoch")
    precise = result["variants"].get(jax_steps.PRECISE_BN)
    precise_text = ""
    if precise and per_epoch:
        share = precise["cpu_ratio_vs_full"][0]
        costs = ", ".join(
            f"{n} batches {n * share:.1f} steps ({100 * n * share / per_epoch:.0f}% of an epoch)"
            for n in (8, 16, 32)
        )
        precise_text = (
            f" A batch of precise-BN statistics costs {share:.2f} train steps (CPU); per "
            f"evaluation, with {per_epoch} train steps per epoch: {costs}."
        )
    return "\n".join([
        "## 1. Recipe overhead",
        "",
        "Re-run: `make bench` (all of 1–4) or `.venv/bin/python -m bench.overhead` (this "
        f"section). Run on {m['date']}: {m['cpu']}, {m['cores']} cores, jax {m['jax']}; load "
        f"average {m['load_before']} at the start.",
        "",
        f"One train step of the default config's model ({c['model']}, width {c['num_filters']}, "
        f"input {'×'.join(map(str, c['image_shape']))}, batch {c['batch_size']}, "
        f"{c['runner']} runner, one CPU device, fixed batch on the device) with the full recipe "
        "against a bare step, and the ladder between them (`bench/jax_steps.py`). "
        f"{c['rounds']} rounds after compilation and warm-up; each round runs one step of every "
        "variant in a fresh random order. Ratio = median over rounds of the variant's time over "
        "the bare step's time in the same round, with a 95% bootstrap interval. CPU time is the "
        "process's CPU seconds per step (both cores), which other programs on the machine "
        "disturb far less than wall time.",
        "",
        common.md_table(
            ["step", "wall ms, median (IQR)", "wall ratio [95% CI]", "CPU ms",
             "CPU ratio [95% CI]"],
            rows,
        ),
        "",
        f"**Full recipe / bare: {full['wall_ratio'][0]:.3f}× wall, {full['cpu_ratio'][0]:.3f}× "
        "CPU** (target ≤ 1.02×)."
        + (
            f" With the weight decay in the optimizer instead: "
            f"{in_optimizer['wall_ratio'][0]:.3f}× wall, {in_optimizer['cpu_ratio'][0]:.3f}× CPU."
            if in_optimizer
            else ""
        ),
        *(
            [
                "",
                "What the modern recipes add (issue #15), timed in the same rounds, as ratios "
                "to the full step:",
                "",
                common.md_table(
                    ["on top of the full step", "wall ms", "wall / full [95% CI]", "CPU ms",
                     "CPU / full [95% CI]"],
                    extra_rows,
                ),
                "",
                precise_text.strip(),
                *_nnx_summary(result),
            ]
            if extras
            else []
        ),
        *_render_large_batch(result),
    ])  # fmt: skip


def _nnx_summary(result: dict) -> list[str]:
    """The NNX row's verdict: the same step on the Flax NNX model over the linen one."""
    nnx = result["variants"].get(jax_steps.NNX)
    if nnx is None:
        return []
    wall, cpu = nnx["wall_ratio_vs_full"], nnx["cpu_ratio_vs_full"]
    return [
        "",
        f"**Flax NNX / linen, the full step: {wall[0]:.3f}× wall [{wall[1]:.3f}, {wall[2]:.3f}], "
        f"{cpu[0]:.3f}× CPU [{cpu[1]:.3f}, {cpu[2]:.3f}]** (target ≤ 1.02×): the step drives "
        "the NNX model through `nnx.split`/`nnx.merge` inside the jitted step, which lowers to "
        "the linen step's program (tests/test_nnx.py compares their results bit for bit).",
    ]


def _render_large_batch(result: dict) -> list[str]:
    """The large-batch summary under the table and the multi-device table."""
    v = result["variants"]
    if "lars" not in v:
        return []

    def ratio(row: dict, key: str = "cpu_ratio") -> str:
        r = row[key]
        return f"{r[0]:.3f}× [{r[1]:.3f}, {r[2]:.3f}]"

    lines = [
        "",
        "Large-batch tools (CPU time over the bare step): LARS "
        f"{ratio(v['lars'])}, LAMB {ratio(v['lamb'])}; the noise scale on one device "
        f"{ratio(v['noise scale'])}, inherently more work there: its two half-batch gradients "
        "take a second backward pass from the same forward pass.",
    ]
    d = result.get("devices")
    if not d:
        return lines
    rows = []
    for name, row in d["variants"].items():
        runner_name, case = name.split("/")
        wr = row["wall_ratio"]
        rows.append([
            runner_name,
            DEVICE_LABELS[case],
            f"{row['wall_ms']:.1f}",
            f"{wr[0]:.3f} [{wr[1]:.3f}, {wr[2]:.3f}]",
            f"{row['cpu_ms']:.1f}",
            ratio(row),
            ratio(row, "cpu_ratio_full"),
        ])  # fmt: skip
    return lines + [
        "",
        f"On {d['devices']} forced CPU devices (one worker process, the same global batch split "
        f"{d['devices']} ways, {d['rounds']} interleaved rounds; the 2 cores are shared by all "
        "devices, so these steps are slower than on one device and only the ratios matter). "
        "Ratios are to the bare and to the full step of the same runner:",
        "",
        common.md_table(
            [
                "runner",
                "step",
                "wall ms",
                "wall / bare [95% CI]",
                "CPU ms",
                "CPU / bare [95% CI]",
                "CPU / full [95% CI]",
            ],
            rows,
        ),  # fmt: skip
    ]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "devices-worker":
        parser = argparse.ArgumentParser()
        parser.add_argument("mode", choices=["devices-worker"])
        parser.add_argument("--devices", type=int, default=DEVICES)
        parser.add_argument("--rounds", type=int, default=40)
        parser.add_argument("--warmup", type=int, default=5)
        args = parser.parse_args()
        common.emit(measure_devices(args.devices, args.rounds, args.warmup))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-checks", action="store_true", help="time the ladder alone")
    parser.add_argument(
        "--no-large-batch",
        action="store_true",
        help="leave out LARS, LAMB, grouped BN, noise scale",
    )
    parser.add_argument("--no-write", action="store_true", help=common.NO_WRITE_HELP)
    args = parser.parse_args()
    result = measure(args.rounds, args.warmup, not args.no_checks, not args.no_large_batch)
    text = render(result)
    if not args.no_write:
        common.publish("overhead", result, text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
