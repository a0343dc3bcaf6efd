"""One rule per field, proven: every numeric, enumerated and boolean field of the schema at the
edges of its range (train/schema.py `Rule.boundaries`: each end, just inside, just outside).

For each value: the field's rule says what the boundary table says; `--describe` (the one
resolve step) refuses every value outside the field's range, and may refuse one inside it for a
rule between fields; and every value it accepts trains. The accepted values are trained packed
into a few runs (a value joins a run whose config still resolves with it), each a real trainer
run of 4 steps on 4 devices with an evaluation, precise BN and checkpoints; a run may stop on a
non-finite loss (exit 3's error, a value's legitimate outcome), never on anything else. A run
that fails is run again value by value, to name the one that did.
"""

import math

import pytest
import tiny_config as tiny

from recipe.data import datasets
from train import describe, loop, resolve, schema

# A run of 4 steps on 16 examples of 8 (2 per device), tiny model and images, 2 epochs.
MICRO = {
    "stage_sizes": (1,),
    "num_filters": 4,
    "train_examples": 16,
    "batch_size": 8,
    "eval_batch_size": 1000,
    "image_size": 8,
    "num_epochs": 2,
    "optimizer.warmup_epochs": 1.0,
    "optimizer.decay_epochs": (1.5,),
    "bn.precise_batches": 1,
    "log_every_steps": 1,
    "checkpoint_every_steps": 2,
}
# Values that a test process cannot train, and where they are trained instead.
NOT_TRAINED_HERE = {
    ("distributed.enabled", True): "joins a jax.distributed cluster: tests/test_robustness.py",
    ("data_workers", 1): "starts worker processes: tests/test_imagenet_input.py",
    ("train_examples", None): "the whole split, 500 steps an epoch here: the trainer tests train "
    "on whole splits",
    ("sharpness.unroll", True): "compiles the default 20 products unrolled, minutes on 2 cores: "
    "tests/test_sharpness.py trains with it at 2",
}


def _boundary_cases() -> list[tuple[str, object, bool]]:
    return [
        (field, value, allowed)
        for field, rule in schema.FIELD_RULES.items()
        for value, allowed in rule.boundaries
    ]


CASES = _boundary_cases()


def _config(data_dir: str, overrides: dict):
    config = tiny.make_config(data_dir, **MICRO)
    with config.unlocked():
        for field, value in overrides.items():
            *parents, leaf = field.split(".")
            section = config
            for parent in parents:
                section = section[parent]
            section[leaf] = value  # unchecked: what a hand-written config could hold
    return config


def _resolves(data_dir: str, overrides: dict) -> bool:
    """Whether `--describe` accepts the config (a value of the wrong type cannot even be set on
    a ConfigDict: the command line refuses it as it parses the flags)."""
    try:
        describe.describe(_config(data_dir, overrides))
    except (resolve.ConfigError, TypeError):
        return False
    return True


def test_every_numeric_enumerated_and_boolean_field_has_boundaries():
    """All but the free strings (paths, an address) and the milestones (a tuple whose rules are
    all between fields: tests/test_bad_input.py)."""
    without = sorted(
        field
        for field, rule in schema.FIELD_RULES.items()
        if all(value is None for value, _ in rule.boundaries)
    )
    assert without == ["data_dir", "distributed.coordinator_address", "optimizer.decay_epochs"], (
        without
    )


@pytest.mark.parametrize("field, value, allowed", CASES, ids=[f"{f}={v!r}" for f, v, _ in CASES])
def test_the_fields_rule_says_what_its_boundaries_say(field, value, allowed):
    rule = schema.FIELD_RULES[field]
    if allowed:
        rule(field, value)
    else:
        with pytest.raises(ValueError, match=f"^{field}"):
            rule(field, value)


@pytest.fixture(scope="module")
def boundary_runs(data_dir):
    """Every boundary value through --describe, and the accepted ones packed into runs:
    ([(field, value) describe refused], [runs, each {field: value}])."""
    datasets.load_source("mnist5k", "train", data_dir)
    refused, runs = [], []
    for field, value, _ in CASES:
        if (field, value) in NOT_TRAINED_HERE or not _resolves(data_dir, {field: value}):
            refused.append((field, value))
            continue
        for run in runs:
            if field not in run and _resolves(data_dir, {**run, field: value}):
                run[field] = value
                break
        else:
            runs.append({field: value})
    return refused, runs


def test_describe_refuses_every_value_outside_its_fields_range(boundary_runs):
    refused, _ = boundary_runs
    outside = [(field, value) for field, value, allowed in CASES if not allowed]
    assert [case for case in outside if case not in refused] == []
    # The values inside a range that describe refuses, each for a rule between fields.
    inside_refused = [(f, v) for f, v, allowed in CASES if allowed and (f, v) in refused]
    assert len(inside_refused) < len(CASES) // 4, inside_refused


def _train(data_dir: str, overrides: dict, workdir) -> str:
    """'trained', 'non-finite' (stopped on a non-finite loss, exit 3's error), or what else
    went wrong."""
    try:
        loop.train_and_evaluate(_config(data_dir, overrides), str(workdir))
    except loop.NonFiniteLossError:
        return "non-finite"
    except Exception as error:  # the finding: an accepted value that does not train
        return f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
    return "trained"


def test_every_value_describe_accepts_trains(boundary_runs, data_dir, tmp_path):
    _, runs = boundary_runs
    assert 8 <= len(runs) <= 20, len(runs)  # packed: a few runs, not one per value
    failures = []
    for index, run in enumerate(runs):
        if _train(data_dir, run, tmp_path / f"run{index}") == "trained":
            continue
        # Which value did it (a run that stopped early left the others' evaluation untried).
        for field, value in run.items():
            outcome = _train(data_dir, {field: value}, tmp_path / f"run{index}-{field}")
            if outcome not in ("trained", "non-finite"):
                failures.append(f"{field}={value!r}: {outcome}")
    assert failures == []


def test_unbounded_ends_are_refused():
    """Infinity and NaN are outside every number's range (the boundaries hold them)."""
    numbers = [
        field
        for field, rule in schema.FIELD_RULES.items()
        if any(isinstance(v, float) and v != 0 for v, _ in rule.boundaries)
    ]
    for field in numbers:
        values = [v for v, _ in schema.FIELD_RULES[field].boundaries]
        assert any(isinstance(v, float) and (math.isinf(v) or math.isnan(v)) for v in values), field
