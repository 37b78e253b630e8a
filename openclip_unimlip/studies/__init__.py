"""The studies: experiments built on the recipes, the evaluation and the data, with their library code
(the console commands that start them are ``openclip_unimlip.commands``).

- `ablation`: the ablation grid of Uni-Mlip's Tables 3 and 4, two-stage, with paired bootstrap intervals.
- `benchmark/`: every medical downstream task found under a data root, in the paper's layout, for model rows
  with optional weights (per pretraining seed) and paired differences to a reference row.
- `demo`: the one-command demo: retrieval before and after a short pre-training, as a report.
- `grid`: a study's cells: settings hash, resume, atomic records, failure isolation, progress, time estimate.
- `experiment`: one experiment end to end (data, an ``open_clip_train`` run, retrieval), shared by the
  demo and the ablation.
- `pretraining/`: pre-training runs: their progress and the Slurm launcher.
- `report`: the report writer every study shares: Markdown tables, the JSON beside them, bar charts.
- `statistics`: intervals over training seeds (t-intervals) and the paired bootstrap.
"""
