"""Pre-training runs of ``open_clip_train`` and their progress.

- `progress`: a run's live progress and loss curves, read from its own ``out.log``.
- `slurm`: the Slurm launcher's logic (recipe table, allocation shape, checks, the srun/torchrun line).
"""
