"""Apply each named one-line break of the method to a copy of the package and run the tests on it.

    .venv/bin/python scripts/mutation_check.py               # baseline, then every break in tests/mutations/*.toml
    .venv/bin/python scripts/mutation_check.py --sanity      # only the baseline: the unmutated copy must pass
    .venv/bin/python scripts/mutation_check.py --only text-dropout-rate mlm-logit-position --jobs 2

Prints a table (break | behaviour it breaks | caught/survived | time) and exits non-zero when a
break survives, a break cannot be applied (stale snippet) or the baseline fails; see
tools/mutation.py.
"""
import argparse
import sys
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tools/ is the checkout's, beside scripts/, not part of the installed package

from tools import mutation  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutations", type=Path, default=ROOT / "tests" / "mutations",
                        help="a TOML list of breaks, or a folder of them "
                             "(default: tests/mutations/, one file per area)")
    parser.add_argument("--root", type=Path, default=ROOT, help="source tree to copy (default: this checkout)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="check only these breaks")
    parser.add_argument("--sanity", action="store_true", help="only run the unmutated copy on the breaks' tests")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run before the breaks")
    parser.add_argument("--list", action="store_true", help="list the breaks and exit")
    parser.add_argument("--jobs", type=int, default=1, help="breaks checked at once (each runs its own pytest)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per break before it counts as a hang")
    parser.add_argument("--marker", default="not slow", help="pytest -m expression (default: the fast suite)")
    parser.add_argument("--verbose", action="store_true", help="print the failing test of each caught break")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        mutations = mutation.load_mutations(args.mutations)
    except (OSError, ValueError) as exc:  # tomllib's errors and MutationError are ValueErrors
        raise SystemExit(f"error: {exc}")
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in mutations})
        if unknown:
            raise SystemExit(f"error: no break named {unknown} in {args.mutations}")
        mutations = [m for m in mutations if m.name in args.only]
    if args.list:
        for m in mutations:
            print(f"{m.name}: {m.breaks}  [{' '.join(m.tests)}]")
        return 0

    if args.sanity or not args.no_baseline:
        tests = mutation.union_of_tests(mutations)
        print(f"baseline: the unmutated copy on {' '.join(tests)} (-m {args.marker!r}) ...", flush=True)
        outcome = mutation.baseline(args.root, tests, args.marker)
        print(f"baseline {outcome.status} in {outcome.seconds:.0f} s\n{outcome.detail}", flush=True)
        if outcome.status != "passed":
            print("error: the unmutated copy fails its tests, so every break would look caught", file=sys.stderr)
            return 2
        if args.sanity:
            return 0

    progress = tqdm(total=len(mutations), desc="breaks", unit="break")

    def done(outcome: mutation.Outcome) -> None:
        progress.write(f"{outcome.mutation.name}: {outcome.status} ({outcome.seconds:.0f} s)")
        progress.update()

    outcomes = list(mutation.run_all(args.root, mutations, args.marker, args.timeout, args.jobs, done))
    progress.close()
    for o in outcomes:
        if o.status == "error" or (args.verbose and o.status != "survived"):
            print(f"--- {o.mutation.name} ({o.status}, {o.module or 'not applied'})\n{o.detail}\n")
    print(mutation.format_table(outcomes))
    return 0 if all(o.caught for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
