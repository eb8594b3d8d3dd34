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
    report = sub.add_parser("report", help="write tables from a runs.csv")
    report.add_argument("--runs", required=True, help="a runs.csv")
    report.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)

    from study.report import write_report
    try:
        if args.command == "run":
            from study.defaults import PROJECT_ROOT, load_profile
            from study.runner import Study
            profile = load_profile(args.profile)
            out = Path(args.out) if args.out else PROJECT_ROOT / "results" / profile["name"]
            runs_csv = Study(profile, out, args.data, args.device, progress=not args.no_progress).run()
            print(f"wrote {runs_csv} and {write_report(runs_csv, out)}")
        else:
            print(f"wrote {write_report(Path(args.runs), Path(args.out))}")
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
