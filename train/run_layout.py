"""The device layout is part of a run: Goyal's k workers, each with n examples of a step, over
which BatchNorm's statistics (and Mixup's pairs, and precise BN's) are taken.

A run stores its layout in `<workdir>/layout.json` at its first start. On a resume:

* the same workers: nothing to do;
* another device count under the jit runner, which takes the workers to be groups of the
  global batch rather than devices: the run keeps its k workers of n examples on any device
  count that divides k (`resolve(..., workers=k)`), and says so in one line;
* another device count under pmap or shard_map, whose workers are the devices: refused before
  anything is compiled or written, in one line naming both layouts and the override that keeps
  n (`--config.runner=jit`, or the original device count).

The training data of a step is the same global batch whatever the layout (its examples are cut
from the epoch's shuffle in order, and each process takes its slice of it), so a kept layout
resumes exactly.
"""

import dataclasses
import json

import jax
import ml_collections
from etils import epath

from train.resolve import ConfigError, Setup, resolve

LAYOUT_FILE = "layout.json"


@dataclasses.dataclass(frozen=True)
class RunLayout:
    """How a run's global batch is split.

    Attributes:
      workers: k, the groups of examples that share BatchNorm statistics (one per device, or
        under the jit runner what the run's first start had).
      per_worker_batch: n, their examples per step.
      devices: the devices of all processes.
      processes: the processes (hosts).
    """

    workers: int
    per_worker_batch: int
    devices: int
    processes: int

    @classmethod
    def of(cls, setup: Setup) -> "RunLayout":
        layout = setup.layout
        return cls(
            layout.workers, layout.per_worker_batch, layout.device_count, jax.process_count()
        )

    def describe(self) -> str:
        devices = f"{self.devices} device{'s' * (self.devices != 1)}"
        processes = f", {self.processes} processes" if self.processes > 1 else ""
        workers = f"{self.workers} worker{'s' * (self.workers != 1)}"
        return f"{workers} of {self.per_worker_batch} examples on {devices}{processes}"


def stored(workdir: epath.Path) -> RunLayout | None:
    """The layout a work dir's run started with (None: a new run, or one written before runs
    stored it)."""
    path = epath.Path(workdir) / LAYOUT_FILE
    if not path.exists():
        return None
    fields = json.loads(path.read_text())
    return RunLayout(**{f.name: fields[f.name] for f in dataclasses.fields(RunLayout)})


def store(workdir: epath.Path, setup: Setup) -> None:
    """Writes the run's layout (on the first process) unless the work dir has one."""
    path = epath.Path(workdir) / LAYOUT_FILE
    if jax.process_index() == 0 and not path.exists():
        path.write_text(json.dumps(dataclasses.asdict(RunLayout.of(setup)), indent=1) + "\n")


def keep(
    setup: Setup, workdir: epath.Path, config: ml_collections.ConfigDict
) -> tuple[Setup, str | None]:
    """(the setup that keeps `workdir`'s stored layout, the line that says what was kept or
    None when nothing changed). Reads only.

    Raises:
      ConfigError: the layout changed where the runner cannot keep it.
    """
    before = stored(workdir)
    now = RunLayout.of(setup)
    if before is None or before.workers == now.workers:
        return setup, None
    devices = now.devices
    if config.runner == "jit" and before.workers % devices == 0:
        kept = resolve(config, devices, workers=before.workers)
        return kept, (
            f"resumed as the run's {before.workers} workers of {before.per_worker_batch} "
            f"examples (Goyal's n) on {devices} device{'s' * (devices != 1)}, where it started "
            f"on {before.devices}: the same BatchNorm statistics, Mixup pairs and data "
            "(jit runner)"
        )
    divisors = [str(d) for d in range(1, before.workers + 1) if before.workers % d == 0]
    kept_on = f"{', '.join(divisors[:-1])} or {divisors[-1]}" if len(divisors) > 1 else "1"
    changed = (
        f"{workdir} holds a run of {before.describe()}; this start has {now.describe()} "
        f"({config.runner} runner), which would change its BatchNorm statistics and Mixup pairs "
        "(Goyal's n); nothing was changed."
    )
    if config.runner == "jit":
        raise ConfigError(
            f"{changed} The jit runner keeps its {before.workers} workers on {kept_on} devices: "
            "resume on one of those"
        )
    raise ConfigError(
        f"{changed} Resume on {before.devices} devices, or keep its {before.workers} workers on "
        f"{kept_on} devices with the jit runner; fix: --config.runner=jit"
    )
