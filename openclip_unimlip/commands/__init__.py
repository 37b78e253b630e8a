"""The console commands of pyproject's ``[project.scripts]``, one module each: ``main(argv=None)`` parses
the arguments, calls the study or library that does the work and prints; ``cli()`` is the console entry
point, which the thin ``scripts/*.py`` shims call too. Nothing outside this package imports it.

- `ablation`: ``unimlip-ablate``, the ablation grid of Tables 3 and 4 (``studies.ablation``).
- `benchmark`: ``unimlip-benchmark``, every downstream task found under a data root (``studies.benchmark``).
- `build_embedded_dataset`: ``unimlip-build-embedded-dataset``, the demo's offline dataset (``data.embedded``).
- `build_knowledge`: ``unimlip-build-knowledge``, MLIP (Li)'s knowledge file (``recipes.mlip_li.knowledge``).
- `convert_medpix`: ``unimlip-convert-medpix``, MedPix 2.0 to shards/CSV (``data.medpix``).
- `convert_pmc_clip`: ``unimlip-convert-pmc-clip``, a PMC-CLIP checkpoint for a Uni-Mlip model.
- `convert_pmcoa`: ``unimlip-convert-pmcoa``, PMC-OA to shards/CSV (``data.pmcoa``).
- `convert_roco`: ``unimlip-convert-roco``, ROCO to shards/CSV (``data.roco``).
- `demo`: ``unimlip-demo``, the one-command demo (``studies.demo``).
- `eval_retrieval`: ``unimlip-eval-retrieval``, image-text retrieval R@K (``evaluation.retrieval``).
- `eval_zero_shot`: ``unimlip-eval-zero-shot``, zero-shot classification (``evaluation.zero_shot``).
- `export`: ``unimlip-export``, a checkpoint exported the way OpenCLIP shares models (``openclip_unimlip.export``).
- `export_clip_benchmark`: ``unimlip-export-clip-benchmark``, retrieval pairs in clip_benchmark's layout.
- `finetune_classification`: ``unimlip-finetune-classification``, chest X-ray fine-tuning (Table 1).
- `finetune_vqa`: ``unimlip-finetune-vqa``, VQA-RAD / SLAKE fine-tuning (Table 2).
- `slurm`: ``unimlip-slurm``, pre-training from inside a Slurm job (``studies.pretraining.slurm``).
- `train`: ``unimlip-train``, ``open_clip_train.main`` with the plugin's patches installed first.
"""
