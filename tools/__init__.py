"""Developer tooling of the checkout, kept out of the installed package (the wheel ships only
``openclip_unimlip/``): the mutation harness, the step and data benchmarks, the GPU-readiness
check and the generator of CheXclusion's vendored test-patient lists (``python -m
tools.chexclusion_test_lists``). Run from the repository root; the thin CLIs are
``scripts/mutation_check.py``, ``scripts/bench_train_step.py``, ``scripts/bench_data.py`` and
``scripts/gpu_check.sh``."""
