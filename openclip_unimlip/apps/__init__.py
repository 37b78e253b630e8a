"""Applications built on the recipes and the command-line interfaces of the package: one module per
command (argparse and ``main(argv)`` returning its result; ``cli()``, the console entry point of
pyproject's ``[project.scripts]``, which the thin ``scripts/X.py`` shims call too). Beside them, what
the demo and the ablation grid share (experiment runner, paired bootstrap, progress bar), the
benchmark suite's datasets, tasks and tables, and the Slurm launcher. Developer tooling (the
mutation check, the step and data benchmarks, the GPU check) lives outside the package, in the
checkout's ``tools/``."""
