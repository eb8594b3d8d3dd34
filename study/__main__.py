"""Command line: ``python -m study run --profile NAME [--data SPEC] [--device D] [--out DIR]``,
``python -m study report --runs FILE.csv --out DIR``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from study.data import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a study profile (finished runs are skipped)")
    run.add_argument("--profile", default="default", help="profile name (study/profiles) or YAML path")
    run.add_argument("--data", help="dataset spec: voc:ROOT, coco:ANN.json:IMAGES, yolo:data.yaml")
    run.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    run.add_argument("--out", help="results folder (default: results/<profile>)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--tuned", action="store_true", help="use each method's best search trial (see search)")
    run.add_argument("--storage", help="Optuna storage of the searches for --tuned (default: SQLite in --out)")
    search = sub.add_parser("search", help="Optuna search of a method's hyperparameters on the validation split")
    search.add_argument("--profile", default="default", help="profile name (study/profiles) or YAML path")
    search.add_argument("--detector", default="faster_rcnn", help="detector family (faster_rcnn)")
    search.add_argument("--method", required=True, help="hinton, fitnets, at, nst or a '+' combination")
    search.add_argument("--n-trials", type=int, required=True, help="total trials over all workers")
    search.add_argument("--storage", help="Optuna RDB URL or journal:PATH (default: SQLite in --out)")
    search.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"])
    search.add_argument("--multi-objective", action="store_true", help="NSGA-II on (val mAP, GFLOPs)")
    search.add_argument("--data", help="dataset spec")
    search.add_argument("--device", help="cpu, cuda, ...")
    search.add_argument("--out", help="results folder (default: results/<profile>)")
    report = sub.add_parser("report", help="write tables from a runs.csv")
    report.add_argument("--runs", required=True, help="a runs.csv")
    report.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)

    from study.report import write_report
    try:
        if args.command in ("run", "search"):
            from study.defaults import PROJECT_ROOT, load_profile
            profile = load_profile(args.profile)
            out = Path(args.out) if args.out else PROJECT_ROOT / "results" / profile["name"]
        if args.command == "run":
            from study.runner import Study
            tuned = None
            if args.tuned:
                from study.search import load_tuned
                tuned = load_tuned(profile, out, args.storage)
                print(f"tuned hyperparameters for: {', '.join(tuned) or 'no method (no finished search)'}")
            runs_csv = Study(profile, out, args.data, args.device, progress=not args.no_progress).run(tuned=tuned)
            print(f"wrote {runs_csv} and {write_report(runs_csv, out)}")
        elif args.command == "search":
            from study.search import search as run_search
            if args.detector != profile["detector"]:
                raise ValueError(f"detector '{args.detector}' is not in this harness yet (known: {profile['detector']})")
            st = run_search(profile, args.method, args.n_trials, out, args.storage, args.data, args.device,
                            args.pruner, args.multi_objective)
            print(f"search '{st.study_name}': {len(st.trials)} trials in storage; report in {out / 'search'}")
        else:
            print(f"wrote {write_report(Path(args.runs), Path(args.out))}")
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
