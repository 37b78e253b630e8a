"""Training-step cost of Uni-Mlip (all terms, and each term alone) relative to plain CLIP.

    HF_HUB_OFFLINE=1 python scripts/bench_train_step.py --sizes tiny rn50
    HF_HUB_OFFLINE=1 python scripts/bench_train_step.py --device cuda --amp bf16 --batch-size 64 64

See tools/bench.py for what each variant runs and how the numbers are defined.
"""
import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tools/ is the checkout's, beside scripts/

from tools.bench import SIZES, VARIANTS, run_step_benchmark, threads_note  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["tiny", "rn50"])
    parser.add_argument("--batch-size", nargs="+", type=int, default=None,
                        help="one per size (default: 16 for tiny, 4 for rn50)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["bf16"], default=None, help="autocast dtype (default: fp32)")
    parser.add_argument("--compile", action="store_true", help="time each variant's forward under torch.compile")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=7, help="timed rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    defaults = {"tiny": 16, "rn50": 4}
    args.batch_size = args.batch_size or [defaults[s] for s in args.sizes]
    if len(args.batch_size) != len(args.sizes):
        parser.error("--batch-size takes one value per size")
    if "clip" not in args.variants:
        args.variants = ["clip", *args.variants]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    amp_dtype = torch.bfloat16 if args.amp == "bf16" else None
    reports = []
    for size, batch_size in zip(args.sizes, args.batch_size):
        report = run_step_benchmark(size, batch_size, args.device, args.variants, args.warmup, args.iters, amp_dtype,
                                     compile_model=args.compile)
        reports.append(report)
        if not args.json:
            print(report.format_table(), flush=True)
            print(flush=True)
    if args.json:
        print(json.dumps({"threads": threads_note(), "reports": [r.to_dict() for r in reports]}, indent=2))
    else:
        print(f"{threads_note()}; median of {args.iters} rounds after {args.warmup} warm-up steps; "
              "spread = (max - min) / median over the rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
