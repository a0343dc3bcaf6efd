"""Command line: `python -m train --config configs/default.py --workdir runs/default`, from a
checkout of the repository.

`--config` is the path of a config file (`get_config()`), with its argument after a colon where
it takes one (`--config configs/imagenet_resnet50_lars.py:32k`). Any config field can be
overridden: `--config.batch_size=512 --config.optimizer.warmup=constant`.

Exit status: 0 done; 2 bad input (a config field, the config file, the work dir, a dataset that
is not prepared or an image folder laid out wrong, a training subset that leaves out classes, or
a work dir holding another run), one line on stderr, before anything is compiled or written; 65
an image that does not decode, with `unreadable_images=stop` (one line naming its file; the
checkpoints written before are intact); 3 non-finite loss, or with `on_nonfinite=skip` more than
half of an epoch's updates skipped (the last good checkpoint is kept); 73 the work dir is in use
by another run that is still going (`train.workdir_lock`: one line naming its host, process id
and start time; nothing is written); 74 a checkpoint, the metrics or the plot could not be
written (disk full, ...; the checkpoints written before are intact); 75 stopped by SIGTERM and
130 by SIGINT, each after writing a checkpoint (run the same command again to resume). With
`on_nonfinite=skip` the final line says how many updates were skipped in all, and with
`unreadable_images=skip` how many images were skipped because they do not decode.

`--describe` prints the resolved recipe (scaled lr, warmup and decay boundaries in updates,
per-device batch, BN scope, which parameters get weight decay) and saves the learning-rate
schedule to `<workdir>/lr_schedule.png`, without training. It refuses a bad config field as
training does, but reads no data: a dataset that is not prepared is refused by training and
`--eval_only` only. `--eval_only` scores the work dir's
latest checkpoint on the test split and writes nothing.
"""

import logging as pylogging
import pathlib
import signal
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from recipe import data
from train import (
    checkpoints,
    describe,
    evaluation,
    loop,
    metrics,
    preemption,
    resolve,
    schema,
    workdir_lock,
)

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_UNREADABLE_DATA = 65  # EX_DATAERR: the input data was incorrect
EXIT_WORKDIR_IN_USE = 73  # EX_CANTCREAT: the run's output cannot be written now
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
        # orbax's own log of it is a traceback per thread, and asyncio's of the other write
        # tasks and futures that failed beside it ("... exception was never retrieved") one more
        # each (orbax is this program's user of asyncio).
        logging.get_absl_handler().addFilter(_not_an_orbax_error)
    config, workdir = _CONFIG.value, _WORKDIR.value
    try:
        if _DESCRIBE.value:
            print(describe.describe(config, workdir))
            return
        if _EVAL_ONLY.value:
            result = evaluation.evaluate_checkpoint(config, workdir)
            if jax.process_index() == 0:
                note = _unreadable_note(result.pop("unreadable_images", None))
                print(f"step {result.pop('step')}: {_summary(result)}{note}")
            return
        result = loop.train_and_evaluate(config, workdir)
    except (resolve.ConfigError, checkpoints.IncompatibleCheckpointError) as error:
        _fail(str(error))
    except loop.NonFiniteLossError as error:
        _fail(str(error), EXIT_NONFINITE)
    except data.UnreadableImageError as error:
        _fail(
            f"{error}; the run stopped (the checkpoints written before are intact); fix: "
            "replace or remove the file, or --config.unreadable_images=skip to skip such images "
            "(each named, and counted)",
            EXIT_UNREADABLE_DATA,
        )
    except workdir_lock.WorkdirInUseError as error:
        _fail(str(error), EXIT_WORKDIR_IN_USE)
    except metrics.WorkdirWriteError as error:  # a checkpoint's, the metrics' or the plot's
        _fail(str(error), EXIT_WRITE_FAILED)
    except preemption.Stopped as stopped:
        print(stopped, file=sys.stderr)
        sys.exit(stopped.exit_code)
    finally:
        preemption.ignore_stop_signals()  # the exit status is decided
    if jax.process_index() == 0:
        skipped = result.pop("skipped_updates", None)
        unreadable = result.pop("unreadable_images", None)
        print(f"final {_summary(result)}" + _skipped_note(skipped) + _unreadable_note(unreadable))
        workdir_text = workdir.rstrip("/")
        plot = f"  plots: {workdir_text}/curves.png" if config.plot_curves else ""
        print(f"metrics: {workdir_text}/metrics.jsonl{plot}")


def _not_an_orbax_error(record: pylogging.LogRecord) -> bool:
    if record.levelno < pylogging.ERROR:
        return True
    if record.name == "asyncio" and "exception was never retrieved" in record.getMessage():
        return False
    return "/orbax/" not in record.pathname


def _summary(result: dict[str, float]) -> str:
    others = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k != "accuracy")
    return f"test accuracy: {100 * result['accuracy']:.2f}% ({others})"


def _skipped_note(skipped: int | None) -> str:
    """The final line's count of skipped updates (`on_nonfinite=skip`; '' in the stop mode)."""
    if skipped is None:
        return ""
    return f"; {skipped} update{'s' * (skipped != 1)} skipped in all (non-finite)"


def _unreadable_note(count: int | None) -> str:
    """The final line's count of images skipped as unreadable (`unreadable_images=skip`)."""
    if count is None:
        return ""
    return f"; {count} unreadable image{'s' * (count != 1)} skipped (named in the log)"


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every bad flag as one line and exit status 2. The config file
    runs once, in the parse; a failed parse is worded from what the parse left behind."""
    try:
        remaining = flags.FLAGS(argv)
    except Exception as error:  # absl and ml_collections raise many types for bad flags
        _fail(_flag_error(argv, error))
    config = flags.FLAGS["config"].value
    if not isinstance(config, config_dict.ConfigDict):  # ml_collections defers an OSError
        filename = _config_filename(argv)
        _fail(f"--config={filename}: {_load_error(filename, None)}")
    return remaining


def _flag_error(argv: list[str], error: Exception) -> str:
    """One line for a failed parse: a config file that did not load, an unknown or ill-typed
    `--config.*` override, or absl's own message."""
    filename = _config_filename(argv)
    if filename is not None and not _exists(filename):
        return f"--config={filename}: {_load_error(filename, error)}"
    config = flags.FLAGS["config"].value
    loaded = isinstance(config, config_dict.ConfigDict)
    overrides = [
        (field, value)
        for field, _, value in (
            arg.removeprefix("--config.").partition("=")
            for arg in argv
            if arg.startswith("--config.")
        )
    ]
    # ml_collections refuses an unknown override before it hands the loaded config over; every
    # config has the schema's fields.
    known = resolve.flat_fields(config if loaded else schema.base_config())
    unknown = [field for field, _ in overrides if field not in known]
    if unknown:
        return resolve.unknown_field_message(unknown)
    if filename is not None and not loaded:
        return f"--config={filename}: {_load_error(filename, error)}"
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


def _load_error(filename: str, error: Exception | None) -> str:
    """Why the config file `filename` (`path[:argument]`) did not load."""
    if not _exists(filename):
        return "no such file (give the path of a config file, e.g. configs/default.py)"
    if error is None:
        return "cannot load it"
    # ml_collections wraps an error of get_config() in its traceback: its last line says it.
    return f"cannot load it ({_one_line(str(error).strip().splitlines()[-1])[:300]})"


def _exists(filename: str) -> bool:
    return pathlib.Path(filename.partition(":")[0]).is_file()


def _kind(value: object) -> str:
    kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def _one_line(error: Exception | str) -> str:
    text = " ".join(str(error).split()).removeprefix("Flags parsing error: ")
    return text or type(error).__name__


def _outside_training(signum: int, frame: object) -> None:
    """SIGTERM/SIGINT handler while the trainer does not hold its own (`stop_on_signals`).

    Before training there is nothing to save: the first signal exits at once with its status
    (75 or 130). After it (the handler is back from the moment training has ended or stopped
    until `main` returns and ignores them), the exit status is decided: signals are ignored, so
    a repeated SIGTERM cannot change it or kill the process while it exits.
    """
    if preemption.training_began():
        return
    preemption.ignore_stop_signals()  # the first signal decides
    name = signal.Signals(signum).name
    print(f"stopped by {name} before training started: nothing to save", file=sys.stderr)
    sys.exit(preemption.exit_code(signum))


def _unraisable(unraisable: "sys.UnraisableHookArgs") -> None:
    """Drops one known echo of a failed checkpoint write: tensorstore completing the write's
    remaining futures on orbax's event loop after orbax closed it (once per chunk, after the
    failure was reported in one line)."""
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return
    sys.__unraisablehook__(unraisable)


def run() -> None:
    """`python -m train`: flags parsed, signals handled, `main` run."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _outside_training)
    sys.unraisablehook = _unraisable
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
