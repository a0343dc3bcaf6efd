"""The step servers of `bench/device.py`: one process per framework builds its train steps once,
then times them on request, so the driver interleaves rounds of JAX and PyTorch steps without
compiling anything again, and never loads two CUDA stacks into one process.

Protocol, one JSON object per stdout line: the server prints ``{"ready": ...}`` once every step
is built, compiled and warmed up (``{"oom": ...}`` if the batch does not fit in the device's
memory); then, for each stdin line ``NAME STEPS``, it runs ``STEPS`` steps of ``NAME``, each
until its results are ready, and prints ``{"name": NAME, "seconds": [...]}``. EOF ends it.

* ``jax``: the project's full step (`train.steps.train_step` with the recipe's optimizer, as
  `python -m train` resolves `configs/imagenet_resnet50_goyal.py`, BN statistics per device) at
  each compute dtype, the bare step (`bench/jax_steps.py`) in float32, and (given its
  overrides) both steps of `configs/default.py`'s model, each under the trainer's pmap runner
  on one device.
* ``torch``: torchvision's model (the twin in `bench/torch_resnet.py` where torchvision lacks
  it or is not installed) trained as `torch_resnet.build_training` trains it: SGD Nesterov, no
  weight decay on BN, label smoothing 0.1, LinearLR → MultiStepLR; channels-last, autocast for
  bfloat16, `torch.compile` of the model where it works (on a GPU), eager otherwise.

Both take a fixed batch of normalised float32 images already on the device (as BENCHMARKS §1
and §2 do: the loader is timed apart), 1,000 classes.

    python -m bench.device_steps jax --model resnet50 --width 64 --image 224 --batch 256
    python -m bench.device_steps torch --model resnet50 --width 64 --image 224 --batch 256
"""

import argparse
import importlib.metadata
import json
import sys
import time
from collections.abc import Callable

DTYPES = ("float32", "bfloat16")
# Goyal et al.'s ImageNet schedule (5 warmup epochs, ÷10 at 30, 60, 80; base batch 256) over
# ImageNet's 1,281,167 training images: what both sides' learning-rate schedules run (its
# values do not change a step's cost, only that it has one).
IMAGENET_TRAIN = 1_281_167


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("framework", choices=["jax", "torch"])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument(
        "--stage-sizes",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        help="blocks per stage, comma-separated (default: the model's own)",
    )
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--default-overrides",
        help="JSON of dotted overrides of configs/default.py for its pair of steps (jax; "
        "none without it)",
    )
    parser.add_argument("--no-compile", action="store_true", help="torch: eager only")
    parser.add_argument(
        "--compile-budget",
        type=float,
        default=150.0,
        help="torch: seconds of torch.compile; the dtypes left when they are spent run eager",
    )
    return parser.parse_args(argv)


def _emit(obj: dict) -> None:
    print(json.dumps(obj, default=str), flush=True)


def _is_oom(error: BaseException) -> bool:
    text = str(error).lower()
    return "resource_exhausted" in text or "out of memory" in text


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# JAX.


def jax_steps(args: argparse.Namespace) -> tuple[dict[str, Callable[[], None]], dict]:
    """({name: blocking step}, facts): the full step at each dtype and the bare step of the
    ResNet, and the full and bare steps of configs/default.py."""
    import jax

    from bench import jax_steps as steps
    from bench import trainer_api

    fns: dict[str, Callable[[], None]] = {}

    def add(name: str, config, variant: str) -> None:
        # The bare step starts from the full step's variables (γ = 0 in the last BN of each
        # block, where §1's bare step has γ = 1): the values do not change what a step costs,
        # and it spares compiling an initialisation.
        setup = steps.build(config, device_count=1)
        runner = trainer_api.runners.RUNNERS[config.runner](jax.devices()[:1])
        batch = steps.synthetic_batch(1, config.batch_size, setup.image_shape, setup.num_classes)
        step = steps.step_fn(variant, setup, setup, axis_name=runner.axis_name)
        fns[name] = steps.Stepper(runner, *step, batch)

    for dtype in DTYPES:
        config = trainer_api.imagenet_resnet50_goyal.get_config()
        config.update_from_flattened_dict({
            "model": args.model,
            "num_filters": args.width,
            "stage_sizes": args.stage_sizes,
            "image_size": args.image,
            "batch_size": args.batch,
            "dtype": dtype,
            "bn.scope": "device",  # statistics over the device's batch, as torch's BatchNorm2d
        })  # fmt: skip
        add(f"full/{dtype}", config, "full")
        if dtype == "float32":
            add("bare/float32", config, "bare")
            # The same step on the global batch, as one jit program (the jit runner).
            config.runner = "jit"
            add("jit/float32", config, "full")
    device = jax.devices()[0]
    facts = {
        "device": f"{device.platform}: {device.device_kind}",
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "cuda_plugin": _version("jax-cuda13-plugin") or _version("jax-cuda12-plugin"),
    }
    if args.default_overrides is not None:
        default = trainer_api.config_for(**json.loads(args.default_overrides))
        add("default full", default, "full")
        add("default bare", default, "bare")
        facts["default_model"] = (
            f"{default.model}, width {default.num_filters}, {default.batch_size} a batch"
        )
    return fns, facts


# ---------------------------------------------------------------------------------------------
# PyTorch.


def torch_steps(args: argparse.Namespace) -> tuple[dict[str, Callable[[], None]], dict]:
    """({name: blocking step}, facts): the full step at each dtype, on the GPU if there is one."""
    import torch

    from bench import torch_resnet

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    # TF32 tensor-core math for float32 matmuls, as XLA uses on the GPU by default (torch's
    # default already allows it for convolutions).
    torch.set_float32_matmul_precision("high")
    make, source = None, "bench/torch_resnet.py (torchvision is not installed)"
    try:
        import torchvision

        source = "bench/torch_resnet.py"
        if (
            args.model in ("resnet18", "resnet34", "resnet50")
            and args.width == 64
            and args.stage_sizes is None
        ):
            make = getattr(torchvision.models, args.model)
            source = f"torchvision {torchvision.__version__} `models.{args.model}`"
    except ImportError:
        pass

    class Autocast(torch.nn.Module):
        """The model under `torch.autocast(dtype)` (AMP; None: off), float32 logits out, so
        the loss is computed in float32 as on the JAX side."""

        def __init__(self, model: torch.nn.Module, dtype: torch.dtype | None):
            super().__init__()
            self.model, self.dtype = model, dtype

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, self.dtype, enabled=self.dtype is not None):
                return self.model(x).float()

    rng = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.image, args.image, generator=rng)
    x = images.to(device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,), generator=rng).to(device)
    steps_per_epoch = IMAGENET_TRAIN // args.batch

    def step_for(dtype: str, compile_model: bool) -> Callable[[], None]:
        torch.manual_seed(0)
        if make is not None:  # γ = 0 in each block's last BN, as the recipe's init
            model = make(num_classes=1000, zero_init_residual=True)
        else:
            model = torch_resnet.ResNet(
                args.model,
                num_classes=1000,
                num_filters=args.width,
                stage_sizes=args.stage_sizes,
            )
        model = model.to(device, memory_format=torch.channels_last).train()
        amp = None if dtype == "float32" else getattr(torch, dtype)
        train_step = torch_resnet.build_training(
            Autocast(torch.compile(model) if compile_model else model, amp),
            base_lr=0.1,
            # Goyal's k = kn / 256; at least 1, as LinearLR only warms up (a smaller batch
            # has none to do): the values do not change what a step costs.
            k=max(args.batch / 256, 1.0),
            warmup_steps=5 * steps_per_epoch,
            milestones=[e * steps_per_epoch for e in (30, 60, 80)],
        )

        def step() -> None:
            loss, _ = train_step(x, y)
            loss.item()  # waits for the step, the optimizer's update included

        return step

    fns, compiled = {}, {}
    compile_until = time.monotonic() + args.compile_budget
    for dtype in DTYPES:
        if cuda and not args.no_compile and time.monotonic() > compile_until:
            compiled[dtype] = "eager (the torch.compile budget was spent)"
        elif cuda and not args.no_compile:
            try:
                fns[f"full/{dtype}"] = step_for(dtype, compile_model=True)
                t0 = time.perf_counter()
                fns[f"full/{dtype}"]()  # compiles
                compiled[dtype] = f"torch.compile ({time.perf_counter() - t0:.0f} s)"
                continue
            except Exception as error:  # any compiler failure: eager instead
                if _is_oom(error):
                    raise
                compiled[dtype] = f"eager (torch.compile failed: {str(error).splitlines()[0]})"
        else:
            compiled[dtype] = "eager"
        fns[f"full/{dtype}"] = step_for(dtype, compile_model=False)
    facts = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "model_source": source,
        "compiled": compiled,
        "threads": torch.get_num_threads(),
    }
    return fns, facts


# ---------------------------------------------------------------------------------------------
# The server loop.


def serve(args: argparse.Namespace) -> None:
    build = jax_steps if args.framework == "jax" else torch_steps
    first_call_s = {}
    try:
        fns, facts = build(args)
        for name, step in fns.items():
            t0 = time.perf_counter()
            step()
            first_call_s[name] = time.perf_counter() - t0
            for _ in range(args.warmup):
                step()
    except Exception as error:  # an OOM is reported to the driver, which halves the batch
        if _is_oom(error):
            _emit({"oom": str(error).splitlines()[0][:300], "batch": args.batch})
            return
        raise
    _emit({"ready": True, "batch": args.batch, "first_call_s": first_call_s, **facts})
    for line in sys.stdin:
        if not line.strip():
            break
        name, steps = line.rsplit(maxsplit=1)  # names have spaces: "default full 40"
        seconds = []
        for _ in range(int(steps)):
            t0 = time.perf_counter()
            fns[name]()
            seconds.append(time.perf_counter() - t0)
        _emit({"name": name, "seconds": seconds})


if __name__ == "__main__":
    serve(_args(sys.argv[1:]))
