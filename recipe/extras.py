"""The parts of the project that need more than the core install, and the extra of each.

``import recipe`` needs only the core install (jax, flax, optax, chex, numpy, ml_collections:
pyproject.toml). ``recipe.data`` needs the ``data`` extra and the trainer (``train/``, run from a
checkout) the ``train`` extra; each checks for its extra's packages when it is imported and,
where one is missing, fails at once with one line that names the extra (``require``).
"""

import importlib.util

# The packages of each extra (pyproject.toml's optional dependencies), by the module each is
# imported as.
DATA = {
    "tensorflow_datasets": "tensorflow-datasets",
    "array_record": "array-record",
    "grain": "grain",
    "simplejpeg": "simplejpeg",
    "cv2": "opencv-python-headless",
    "PIL": "pillow",
}
TRAIN = {**DATA, "tensorboard": "tensorboard", "matplotlib": "matplotlib", "tqdm": "tqdm"}


def require(part: str, extra: str, modules: dict[str, str]) -> None:
    """Raises ``ImportError`` in one line naming ``extra`` if a module of ``modules`` cannot be
    imported (found without importing anything).

    >>> require("recipe.data", "data", {"no_such_module": "no-such-package"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ImportError: recipe.data needs the 'data' extra: no-such-package is not installed; pip ...
    """
    missing = [package for module, package in modules.items() if not _importable(module)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ImportError(
            f"{part} needs the {extra!r} extra: {', '.join(missing)} {verb} not installed; "
            f"pip install 'large-batch-recipe[{extra}]'"
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # a module whose __spec__ is None (sys.modules entry set to None)
        return False
