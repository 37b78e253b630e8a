"""Applications built on the recipes, each also a thin script in ``scripts/``: the demo, the
ablation grid (with its paired bootstrap), the experiment runner they share, the benchmarks, the
GPU check, the Slurm launcher, the training progress bar and the mutation check."""
