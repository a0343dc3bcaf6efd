"""Where a train step's time goes: per-operation profiles of the JAX step and the PyTorch step.

JAX: `jax.profiler` traces a few steps; the XLA:CPU thunk events (one per HLO instruction the
runtime executes) are read back from the .xplane.pb and grouped with the compiled HLO into
convolution forward / backward-input / backward-kernel, layout transposes and copies, other
fused element-wise and reduction kernels (BatchNorm, ReLU, loss, optimizer), and the rest.
Thunks run concurrently on XLA's two Eigen threads, so the sums are thread-time, not wall time.

PyTorch: `torch.profiler` self CPU time per aten op, grouped the same way (its convolution
backward computes the input and kernel gradients in one op).

    python -m bench.profile_step --framework jax|torch [bench/compared_step.py's model arguments]
"""

import collections
import glob
import os
import re
import sys
import tempfile

from bench import common, compared_step

CATEGORIES = (
    "conv forward",
    "conv backward-input",
    "conv backward-kernel",
    "conv backward (input+kernel)",
    "batch norm (fwd+bwd)",
    "ReLU, residual add, pooling",
    "loss",
    "optimizer, metrics, finite check",
    "layout transposes, copies",
    "dense (fc)",
    "other",
)


def _hlo_instructions(hlo: str) -> dict[str, dict]:
    """ENTRY instruction name → {shape, opcode, calls, op_name} of a compiled HLO module."""
    computations: dict[str, str] = {}
    for match in re.finditer(r"^(?:ENTRY )?%(\S+) .*?\{\n(.*?)^\}", hlo, re.M | re.S):
        computations[match[1]] = match[2]
    entry = hlo[hlo.index("ENTRY") :]
    entry = entry[: entry.index("\n}")]
    instructions = {}
    for line in entry.splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+) ([\w-]+)\(", line)
        if not m:
            continue
        calls = re.search(r"calls=%([\w.\-]+)", line)
        op_name = re.search(r'op_name="([^"]*)"', line)
        body = computations.get(calls[1], "") if calls else ""
        inner_conv = re.search(r"= (\S+) convolution\((.*)", body)
        if inner_conv:
            inner_op = re.search(r'op_name="([^"]*)"', inner_conv[2])
            inner_conv = (inner_conv[1], inner_op[1] if inner_op else "")
        instructions[m[1]] = {
            "shape": m[2],
            "opcode": m[3],
            "op_name": op_name[1] if op_name else "",
            "body": body,
            "inner_conv": inner_conv,
        }
    return instructions


def _dims(shape: str) -> tuple[int, ...]:
    m = re.search(r"\[([\d,]*)\]", shape)
    return tuple(int(d) for d in m[1].split(",") if d) if m else ()


def _categorize_jax(name: str, info: dict, kernel_shapes: set) -> str:
    """The category of an executed HLO instruction (see CATEGORIES)."""
    opcode, op_name = info["opcode"], info["op_name"]
    conv = None
    if opcode == "convolution":
        conv = info["shape"]
    elif info["inner_conv"]:
        conv = info["inner_conv"][0]
        op_name = info["inner_conv"][1] or op_name
    if conv:
        dims = list(_dims(conv))
        while len(dims) > 4 and dims[0] == 1:
            dims.pop(0)
        if tuple(sorted(dims)) in kernel_shapes:
            return "conv backward-kernel"
        return "conv backward-input" if "transpose(" in op_name else "conv forward"
    if opcode == "dot" or "/fc/" in op_name:
        return "dense (fc)"
    if opcode in ("copy", "transpose") or name.startswith(("transpose", "copy")):
        return "layout transposes, copies"
    if "cross_entropy" in op_name or "log_softmax" in op_name:
        return "loss"
    if "ResNet" in op_name:
        if re.search(r"(^|/)(stem_bn|proj_bn|bn\d|bn_last)/", op_name):
            return "batch norm (fwd+bwd)"
        return "ReLU, residual add, pooling"
    if opcode in ("fusion", "reduce", "select", "add", "multiply"):
        return "optimizer, metrics, finite check"
    return "other"


def profile_jax(args, num_steps: int = 3) -> dict:
    import jax
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    setup, stepper = compared_step.jax_stepper(args)
    hlo = stepper.step.lower(stepper.state, stepper.batch).compile().as_text()
    instructions = _hlo_instructions(hlo)
    kernel_shapes = {
        tuple(sorted(x.shape))
        for x in jax.tree_util.tree_leaves(setup.variables["params"])
        if x.ndim == 4
    }
    for _ in range(args.warmup + 1):
        stepper()
    tmp = tempfile.mkdtemp(prefix="jaxprof")
    jax.profiler.start_trace(tmp)
    for _ in range(num_steps):
        stepper()
    jax.profiler.stop_trace()
    path = sorted(glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    ms = collections.Counter()
    unknown = collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if "Eigen" not in line.name and "XLA" not in line.name:
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if name in instructions:
                    category = _categorize_jax(name, instructions[name], kernel_shapes)
                    ms[category] += event.duration_ps / 1e9 / num_steps
                elif not name.startswith("ThunkExecutor") and not name.startswith("$"):
                    unknown[name] += event.duration_ps / 1e9 / num_steps
    return {"ms_per_step": dict(ms), "unattributed": dict(unknown.most_common(5))}


def profile_torch(args, num_steps: int = 3) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench import torch_resnet

    torch.manual_seed(0)
    model = torch_resnet.ResNet(
        args.model, in_channels=args.channels, num_filters=args.width, stem=args.stem
    )
    images, labels = compared_step.fixed_batch(args)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels).long()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    spe = 4000 // args.batch
    step = torch_resnet.build_training(
        model, base_lr=0.1, k=args.batch / 32, warmup_steps=2 * spe, milestones=[8 * spe]
    )
    for _ in range(args.warmup + 1):
        step(x, y)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(num_steps):
            step(x, y)
    ms = collections.Counter()
    for event in prof.key_averages():
        key = event.key
        self_ms = event.self_cpu_time_total / 1e3 / num_steps
        if "convolution_backward" in key:
            category = "conv backward (input+kernel)"
        elif "conv" in key:
            category = "conv forward"
        elif "batch_norm" in key:
            category = "batch norm (fwd+bwd)"
        elif "Optimizer" in key or "sgd" in key.lower() or "_foreach" in key:
            category = "optimizer update"
        elif key in ("aten::copy_", "aten::contiguous", "aten::to", "aten::clone"):
            category = "layout transposes, copies"
        elif key in ("aten::addmm", "aten::mm", "aten::linear", "aten::t"):
            category = "dense (fc)"
        elif "cross_entropy" in key or "log_softmax" in key or "nll_loss" in key:
            category = "loss"
        elif any(k in key for k in ("relu", "threshold", "add", "mean", "sum", "div")):
            category = "ReLU, residual add, pooling"
        else:
            category = "other"
        ms[category] += self_ms
    return {"ms_per_step": dict(ms)}


def main() -> None:
    argv = sys.argv[1:]
    args = compared_step.worker_args(["worker", *argv])
    result = profile_jax(args) if args.framework == "jax" else profile_torch(args)
    result["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    result["args"] = vars(args)
    common.emit(result)


if __name__ == "__main__":
    sys.exit(main())
