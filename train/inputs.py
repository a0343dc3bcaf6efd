"""What the trainer's loops feed the steps: the dataset's splits (a class-balanced subset of the
training split with `train_examples`), this process's share of the loader, the images it could
not decode, and the inputs' normalisation inside the jitted steps (batches cross to the devices
as uint8)."""

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from recipe.data import datasets, pipeline, subsets
from train.resolve import ConfigError, Setup, check_subset


@dataclasses.dataclass(frozen=True)
class TrainingSubset:
    """The `train_examples` examples of the training split a run trains on.

    Attributes:
      positions: their positions in the split, ascending (`recipe.data.class_balanced_subset`).
      counts: examples per class in the subset.
      split_counts: examples per class in the whole split.
    """

    positions: np.ndarray
    counts: np.ndarray
    split_counts: np.ndarray

    def text(self, spec: datasets.DatasetSpec) -> str:
        """The subset in words, with its class counts (all of them for up to 20 classes)."""
        count, total = int(self.counts.sum()), int(self.split_counts.sum())
        names = spec.class_names or tuple(str(label) for label in range(spec.num_classes))
        if len(set(self.counts.tolist())) == 1:
            per_class = f"{self.counts[0]} of each of the {len(self.counts)} classes"
        elif len(self.counts) <= 20:
            per_class = ", ".join(f"{names[c]}: {n}" for c, n in enumerate(self.counts))
        else:
            low, high = int(np.argmin(self.counts)), int(np.argmax(self.counts))
            per_class = (
                f"{self.counts[low]} (class {names[low]}) to {self.counts[high]} (class "
                f"{names[high]}) per class, median {np.median(self.counts):g}"
            )
        return (
            f"{count} of the {total} training examples, drawn per class with a fixed seed: "
            f"{per_class}"
        )


def training_subset(setup: Setup) -> TrainingSubset | None:
    """The run's training subset (None without `train_examples`), after its rule
    (`resolve.check_subset`): it reads the training split's labels.

    Raises:
      ConfigError: the subset leaves out a class or is far from the split's balance, or the
        dataset is not prepared.
    """
    count = setup.data.train_examples
    if count is None:
        return None
    spec = setup.spec
    try:
        labels = datasets.split_labels(spec.name, spec.train_split, setup.data.data_dir)
    except datasets.DatasetNotPreparedError as error:
        raise ConfigError(f"dataset {' '.join(str(error).split())}") from error
    positions = subsets.class_balanced_subset(labels, count)
    subset = TrainingSubset(
        positions=positions,
        counts=np.bincount(labels[positions], minlength=spec.num_classes),
        split_counts=np.bincount(labels, minlength=spec.num_classes),
    )
    check_subset(setup.config, spec, subset.split_counts, subset.counts)
    return subset


def open_data(setup: Setup) -> tuple[Any, Any]:
    """(train source, test source) of the run's dataset: the training subset with
    `train_examples` (its rule checked first), held decoded in memory with `data_in_memory`
    (decoded once per process).

    Raises:
      ConfigError: the dataset is not prepared in the data dir, or the training subset breaks
        its rule.
    """
    spec, data = setup.spec, setup.data
    subset = training_subset(setup)
    try:
        if data.in_memory:
            train = datasets.load_in_memory(spec.name, spec.train_split, data.data_dir)
            test = datasets.load_in_memory(spec.name, spec.test_split, data.data_dir)
        else:
            train, test = (
                datasets.load_source(spec.name, split, data.data_dir, family=spec.family)
                for split in (spec.train_split, spec.test_split)
            )
    except datasets.DatasetNotPreparedError as error:
        raise ConfigError(f"dataset {' '.join(str(error).split())}") from error
    if subset is not None:
        train = subsets.Subset(train, subset.positions)
    return train, test


class UnreadableImages:
    """The images the loader skipped because they do not decode (`unreadable_images='skip'`):
    each named once, as `write` is given it, when first met; `count` of them for the final
    line and the log records. On several hosts, each process's share.

    Args:
      sources: the split the loader reads, by the name `watch` is given ('train', 'test').
      write: where each newly met one is said (the progress bar's `write`).
    """

    def __init__(self, sources: dict[str, Sequence[dict[str, Any]]], write: Callable[[str], None]):
        self._sources, self._write = sources, write
        self._seen: set[tuple[str, int]] = set()

    @property
    def count(self) -> int:
        """Unreadable images met so far (each counted once)."""
        return len(self._seen)

    def watch(self, batches: Iterator[dict[str, np.ndarray]], split: str):
        """`batches`, passed through, noting the unreadable examples they mark."""
        for batch in batches:
            for index in batch["index"][batch["unreadable"]].tolist():
                if (split, index) not in self._seen:
                    self._seen.add((split, index))
                    example = self._sources[split][index]
                    name = example.get("file_name") or f"example {index}"
                    if isinstance(name, bytes):
                        name = name.decode(errors="replace")
                    self._write(
                        f"skipped an image that cannot be read or decoded ({split} split): {name}"
                    )
            yield batch


def train_batches(
    setup: Setup, source: Any, *, start_step: int, num_steps: int, augment: bool
) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of the training batches of steps `start_step` … `start_step +
    num_steps − 1` (the stream is a function of the seed and the step, so a resumed run and
    precise BN read exactly the batches of those steps)."""
    return pipeline.train_batches(
        source,
        setup.spec,
        seed=setup.seed,
        global_batch=setup.layout.batch_size,
        start_step=start_step,
        num_steps=num_steps,
        augment=augment,
        accumulation_steps=setup.layout.accumulation_steps,
        **loader_options(setup),
    )


def loader_options(setup: Setup) -> dict[str, Any]:
    """This process's share of the batch, and uint8 images from `setup.data_workers` workers;
    unreadable images stopped at or skipped as the config says."""
    return dict(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        local_device_count=jax.local_device_count(),
        image_size=setup.data.image_size,
        worker_count=setup.data_workers,
        normalize=False,  # uint8 to the devices; `normalizer` inside the steps
        unreadable=setup.data.unreadable,
    )


def normalizer(setup: Setup) -> Callable[[jax.Array], jax.Array]:
    """The input normalisation of the steps, `(x/255 − mean) / std` in the compute dtype, which
    XLA fuses into the first convolution."""
    return functools.partial(pipeline.normalize_images, spec=setup.spec, dtype=setup.model.dtype)


def model_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays the steps read (drops the loader's bookkeeping such as 'index')."""
    return {k: v for k, v in batch.items() if k in ("image", "label", "mask")}
