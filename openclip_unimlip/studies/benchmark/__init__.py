"""The benchmark (``unimlip-benchmark``): OpenCLIP models on every medical downstream task found under
a data root (``data.releases``), in the paper's layout, with the paper's numbers beside.

- `engine`: presets, the cells of a run, resuming, the report and the plan.
- `tasks`: one task per (dataset, kind), each wrapping its single-task evaluation.
- `tables`: the report's tables (Fig. 2, Tables 1 and 2) as JSON, Markdown and plots.
"""
