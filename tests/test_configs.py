"""Every config file resolves to the recipe it resolved to when the configs were first built
from `train.schema` (pinned in tests/resolved_configs.json: every field, and `--describe`'s
lines on 4 devices but the input line, whose worker count is the machine's): a change to the
demo or to the schema's defaults cannot move another config unnoticed."""

import json
import pathlib

import jax
import pytest
from absl import flags
from ml_collections import config_flags

from train import resolve
from train.describe import recipe_text

REPO = pathlib.Path(__file__).resolve().parents[1]
PINNED = json.loads((REPO / "tests" / "resolved_configs.json").read_text())


def _load(name: str):
    """`--config configs/<name>` as the command line loads it (`:arg` included)."""
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values)
    flag_values(["python -m train", f"--config={REPO / 'configs' / name}"])
    return flag_values.config


def test_every_config_file_is_pinned():
    files = {p.name for p in (REPO / "configs").glob("*.py")} - {"__init__.py", "mlperf_lars.py"}
    lars = {name.split(":")[0] for name in PINNED if ":" in name}
    assert files == {name for name in PINNED if ":" not in name} | lars


@pytest.mark.parametrize("name", sorted(PINNED))
def test_config_resolves_as_pinned(name):
    config = _load(name)
    assert json.loads(json.dumps(resolve.flat_fields(config))) == PINNED[name]["fields"]
    assert jax.device_count() == 4
    lines = recipe_text(resolve.resolve(config, 4)).splitlines()
    assert [line for line in lines if not line.startswith("input ")] == PINNED[name]["recipe"]


def test_lars_config_refuses_another_batch():
    with pytest.raises(
        flags.IllegalFlagValueError, match="must be one of 8k, 16k, 32k, 64k, got '4k'"
    ):
        _load("imagenet_resnet50_lars.py:4k")
