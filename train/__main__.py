"""Command line: `python -m train --config configs/default.py --workdir runs/default`
(or `recipe-train ...`).

Any config field can be overridden: `--config.batch_size=512 --config.optimizer.warmup=constant`.
`--config` also takes the name of a packaged config (`--config=imagenet_resnet50_goyal`).

Exit status: 0 done; 2 bad input (a config field, the config file, the work dir, a dataset that
is not prepared, or a work dir holding another run), one line on stderr, before anything is
compiled or written; 3 non-finite loss (the last good checkpoint is kept); 74 a checkpoint could
not be written (disk full, ...; the previous one is intact); 75 stopped by SIGTERM and 130 by
SIGINT, each after writing a checkpoint (run the same command again to resume).

`--describe` prints the resolved recipe (scaled lr, warmup and decay boundaries in updates,
per-device batch, BN scope, which parameters get weight decay) and saves the learning-rate
schedule to `<workdir>/lr_schedule.png`, without training. `--eval_only` scores the work dir's
latest checkpoint on the test split and writes nothing.
"""

import importlib.resources
import importlib.util
import logging as pylogging
import pathlib
import signal
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from train import checkpoints, describe, evaluation, loop, preemption, resolve

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_WRITE_FAILED = 74  # EX_IOERR

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
_DESCRIBE = flags.DEFINE_bool("describe", False, "Print the resolved recipe and exit.")
_EVAL_ONLY = flags.DEFINE_bool(
    "eval_only", False, "Evaluate the work dir's latest checkpoint on the test split and exit."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax and jax are chatty at INFO
        # Every orbax failure reaches the trainer as an exception that it reports in one line;
        # orbax's own log of it is a traceback per thread.
        logging.get_absl_handler().addFilter(_not_an_orbax_error)
    config, workdir = _CONFIG.value, _WORKDIR.value
    try:
        if _DESCRIBE.value:
            print(describe.describe(config, workdir))
            return
        if _EVAL_ONLY.value:
            result = evaluation.evaluate_checkpoint(config, workdir)
            if jax.process_index() == 0:
                print(f"step {result.pop('step')}: {_summary(result)}")
            return
        result = loop.train_and_evaluate(config, workdir)
    except (resolve.ConfigError, checkpoints.IncompatibleCheckpointError) as error:
        _fail(str(error))
    except loop.NonFiniteLossError as error:
        _fail(str(error), EXIT_NONFINITE)
    except checkpoints.CheckpointWriteError as error:
        _fail(str(error), EXIT_WRITE_FAILED)
    except preemption.Stopped as stopped:
        print(stopped, file=sys.stderr)
        sys.exit(stopped.exit_code)
    finally:
        _OUTSIDE_TRAINING.finished = True
    if jax.process_index() == 0:
        print(f"final {_summary(result)}")
        workdir_text = workdir.rstrip("/")
        print(f"metrics: {workdir_text}/metrics.jsonl  plots: {workdir_text}/curves.png")


def _not_an_orbax_error(record: pylogging.LogRecord) -> bool:
    return record.levelno < pylogging.ERROR or "/orbax/" not in record.pathname


def _summary(result: dict[str, float]) -> str:
    others = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k != "accuracy")
    return f"test accuracy: {100 * result['accuracy']:.2f}% ({others})"


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every bad flag as one line and exit status 2.

    A bare config name (`--config=default`) is one of the packaged configs.
    """
    argv = _packaged_configs(argv)
    try:
        remaining = flags.FLAGS(argv)
    except Exception as error:  # absl and ml_collections raise many types for bad flags
        _fail(_flag_error(argv, error))
    config = flags.FLAGS["config"].value
    if not isinstance(config, config_dict.ConfigDict):  # ml_collections defers the load error
        filename = config_flags.get_config_filename(flags.FLAGS["config"])
        _fail(f"--config={filename}: {_load_error(filename)}")
    return remaining


def _flag_error(argv: list[str], error: Exception) -> str:
    """One line for a failed parse: an unknown or ill-typed `--config.*` override, or absl's."""
    overrides = [
        (field, value)
        for field, _, value in (
            arg.removeprefix("--config.").partition("=")
            for arg in argv
            if arg.startswith("--config.")
        )
    ]
    filename = _config_filename(argv)
    if filename is None:
        return _one_line(error)
    try:
        known = resolve.flat_fields(_load_config(filename))
    except Exception:
        return f"--config={filename}: {_load_error(filename)}"
    unknown = [field for field, _ in overrides if field not in known]
    if unknown:
        return resolve.unknown_field_message(unknown)
    for field, value in overrides:
        if value and value in str(error):
            return (
                f"{field} must be {_kind(known[field])}, got {value!r}; fix: "
                f"--config.{field}={resolve.cli_value(known[field])}"
            )
    return _one_line(error)


def _config_filename(argv: list[str]) -> str | None:
    """The last `--config` given (absl's rule), or None."""
    filename = None
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            filename = arg.partition("=")[2]
        elif arg == "--config" and i + 1 < len(argv):
            filename = argv[i + 1]
    return filename


def _load_config(filename: str) -> config_dict.ConfigDict:
    """`get_config()` of a config file, loaded as ml_collections does (no `:args` support)."""
    spec = importlib.util.spec_from_file_location("recipe_cli_config", filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _packaged_configs(argv: list[str]) -> list[str]:
    """`--config=NAME` / `--config NAME` → the packaged configs/NAME.py, when NAME is not
    a file."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            argv[i] = "--config=" + _packaged(arg.partition("=")[2])
        elif arg == "--config" and i + 1 < len(argv):
            argv[i + 1] = _packaged(argv[i + 1])
    return argv


def _packaged(path: str) -> str:
    if pathlib.Path(path).exists():
        return path
    packaged = importlib.resources.files("configs") / f"{path.removesuffix('.py')}.py"
    return str(packaged) if packaged.is_file() else path


def _kind(value: object) -> str:
    kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split()).removeprefix("Flags parsing error: ")
    return text or type(error).__name__


def _load_error(filename: str | None) -> str:
    if filename and not pathlib.Path(filename).exists():
        return "no such file (give a config file, or the name of one in configs/)"
    try:
        _load_config(filename)
    except Exception as error:
        return f"cannot load it ({_one_line(error)[:300]})"
    return "cannot load it"


class _OutsideTraining:
    """SIGTERM/SIGINT handler while the trainer does not hold its own (`stop_on_signals`).

    Before training there is nothing to save: the first signal exits at once with its status
    (75 or 130). Once the trainer has returned or stopped, further signals are ignored, so a
    repeated SIGTERM cannot change the exit status or kill the process while it exits.
    """

    def __init__(self) -> None:
        self.finished = False

    def __call__(self, signum: int, frame: object) -> None:
        if self.finished:
            return
        self.finished = True
        name = signal.Signals(signum).name
        print(f"stopped by {name} before training started: nothing to save", file=sys.stderr)
        sys.exit(preemption.exit_code(signum))


_OUTSIDE_TRAINING = _OutsideTraining()


def _unraisable(unraisable: "sys.UnraisableHookArgs") -> None:
    """Drops one known echo of a failed checkpoint write: tensorstore completing the write's
    remaining futures on orbax's event loop after orbax closed it (once per chunk, after the
    failure was reported in one line)."""
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return
    sys.__unraisablehook__(unraisable)


def run() -> None:
    """The `recipe-train` console script."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _OUTSIDE_TRAINING)
    sys.unraisablehook = _unraisable
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
