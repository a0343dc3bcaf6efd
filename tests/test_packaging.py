"""The package as a user installs it: one top-level name, and both commands train.

The wheel is built from a copy of the checkout without build isolation (offline; nothing lands in
the checkout) and installed without its dependencies into a fresh venv that borrows this
environment's packages through a `.pth` line. Both `recipe-train` and `python -m train`
then run from a directory outside the checkout, so they can only import the installed wheel.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds per subprocess; a tiny run takes ~20 s on an idle 2-core machine


def _run(command: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    shutil.copytree(
        REPO / "recipe", source / "recipe", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path_factory.mktemp("wheels")
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--quiet", "--wheel-dir", str(out), str(source)]
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = out.glob("recipe-*.whl")
    return path


def test_the_wheel_holds_one_top_level_package_and_the_console_script(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    top_level = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert top_level == {"recipe"}
    assert {"train/__main__.py", "configs/default.py"} <= set(names)
    assert "recipe-train = train.__main__:run" in scripts


def test_both_commands_train_the_tiny_config_from_the_installed_wheel(wheel, data_dir, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    env_site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
    )
    (env_site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index"]
        + ["--quiet", str(wheel)]
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert sorted(p.name for p in env_site.iterdir() if not p.name.endswith(".pth")) == [
        "recipe",
        wheel.name.split("-py3")[0] + ".dist-info",
    ]

    run_dir = tmp_path / "elsewhere"  # not the checkout: `python -m` puts the cwd on sys.path
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    imported = _run([python, "-c", "import recipe; print(recipe.__file__)"], cwd=run_dir, env=env)
    assert imported.stdout.strip() == str(env_site / "recipe" / "__init__.py")

    commands = {
        "console script": [env_dir / "bin" / "recipe-train"],
        "python -m": [python, "-m", "train"],
    }
    arguments = [
        f"--config={REPO / 'tests' / 'tiny_config.py'}",
        f"--config.data_dir={data_dir}",
    ]
    processes = {  # both at once: each is mostly single-threaded compilation
        # A work dir relative to the cwd, as `make train`'s runs/default (orbax wants absolute
        # paths: the checkpointer makes them so).
        name: subprocess.Popen(
            [*entry, *arguments, f"--workdir={name.replace(' ', '_')}"],
            cwd=run_dir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, entry in commands.items()
    }
    try:
        outputs = {name: p.communicate(timeout=TIMEOUT)[0] for name, p in processes.items()}
    finally:
        for process in processes.values():
            process.kill()
    for name, process in processes.items():
        assert process.returncode == 0, f"{name}: {outputs[name][-3000:]}"
        assert "final test accuracy" in outputs[name], f"{name}: {outputs[name][-3000:]}"
        assert (run_dir / name.replace(" ", "_") / "checkpoints" / "12").is_dir(), name
