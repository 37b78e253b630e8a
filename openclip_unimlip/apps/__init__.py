"""Applications built on the recipes, each also a thin script in ``scripts/``: the demo, the
ablation grid (with its paired bootstrap), the experiment runner they share, the benchmark suite,
the Slurm launcher and the training progress bar. Developer tooling (the mutation check, the
step and data benchmarks, the GPU check) lives outside the package, in the checkout's ``tools/``."""
