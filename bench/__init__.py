"""Benchmarks and the small-scale reproductions; see BENCHMARKS.md.

One module per job:

* the families of `make bench` (`run_all.py` runs them and writes `summary.py`'s table): 1.
  `overhead.py` (the recipe's step against a bare one, the variants in `jax_steps.py`), 2.
  `vs_torch.py` (against PyTorch eager, with `torch_resnet.py`, `compared_step.py` and the
  per-operation `profile_step.py`), 3. `loader.py`, 4. `runners.py`, 6. `input.py`,
  7. `precise_bn.py`;
* the reproductions of Goyal et al. Table 1, which share `table1.py` (setting, rows, runs,
  reading results) and `table1_run.py` (one run and its precise-BN test error): 5.
  `reproduce.py` (MNIST-5k; its text `reproduce_section.py`, its figure `reproduce_figure.py`)
  and 8. `reproduce_fashion.py` (its grid `reproduce_fashion_design.py`, then `_analysis`,
  `_figures` and `_section`), sized by `fashion_design.py`;
* why warmup works, 10. `warmup_reasons.py` (three reasons over seeds, the trainable rates, the
  warm start);
* `common.py` (machine facts, timing, workers, BENCHMARKS.md sections) and `trainer_api.py`, the
  only module that imports the trainer (`train/`) and its configs.
"""
