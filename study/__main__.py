"""Command line: ``python -m study run --profile NAME [--data SPEC] [--device D] [--out DIR]``,
``python -m study report --runs FILE.csv --out DIR``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from study.errors import StudyError


def write_frontier_of(study, runs_csv: Path, out: Path) -> Path:
    """FRONTIER.md for a study's runs.csv, with the test-image bootstrap against its test split."""
    from study.frontier_report import write_frontier
    cfg = study.profile["report"]
    return write_frontier(runs_csv, out, study.test_ground_truth(), cfg["bootstrap"], cfg["bootstrap_seed"],
                          planned=len(study.planned()))


def profile_of(name_or_path: str) -> dict:
    """:func:`study.defaults.load_profile` (its one-line errors are :class:`StudyError`)."""
    from study.defaults import load_profile
    return load_profile(name_or_path)


def profile_and_out(args) -> tuple[dict, Path]:
    """The profile ``--profile`` names and the results folder (``--out``, or results/<profile>)."""
    from study.defaults import PROJECT_ROOT
    profile = profile_of(args.profile)
    return profile, Path(args.out) if args.out else PROJECT_ROOT / "results" / profile["name"]


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser: one subparser per subcommand of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="python -m study", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a study profile (finished runs are skipped)")
    run.add_argument("--profile", default="default", help="profile name (study/profiles) or YAML path")
    run.add_argument("--data", help="dataset spec: voc:ROOT, coco:ANN.json:IMAGES, yolo:data.yaml")
    run.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    run.add_argument("--out", help="results folder (default: results/<profile>)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--workers", type=int, help="runs at once, each in its own process (default: the profile's "
                                                  "execution.workers, auto = one per CPU core, one on a GPU)")
    run.add_argument("--executor", choices=["local", "ray"], help="local processes (default) or a Ray cluster")
    run.add_argument("--address", help="with --executor ray: the cluster's HOST:PORT (default: start a local Ray)")
    run.add_argument("--reuse", action="append", default=[], metavar="DIR",
                     help="copy finished runs with the same run ids from another results folder (repeatable)")
    run.add_argument("--val-only", action="store_true",
                     help="design pilots: train and record validation mAP only (no test evaluation, latency or "
                          "report), so that a design can be fixed before any test number exists")
    run.add_argument("--tuned", action="store_true", help="use each method's best search trial (see search)")
    run.add_argument("--storage", help="Optuna storage of the searches for --tuned (default: SQLite in --out)")
    search = sub.add_parser("search", help="Optuna search of a method's hyperparameters on the validation split")
    search.add_argument("--profile", default="default", help="profile name (study/profiles) or YAML path")
    search.add_argument("--detector", default="faster_rcnn", help="detector family: faster_rcnn, yolo, fcos")
    search.add_argument("--method", required=True, help="hinton, fitnets, at, nst or a '+' combination")
    search.add_argument("--n-trials", type=int, help="total trials over all workers")
    search.add_argument("--budget-epochs", type=int, help="or: total training epochs over all trials and workers")
    search.add_argument("--seed", type=int, help="student seed of the trials (default: the profile's first)")
    search.add_argument("--storage", help="Optuna RDB URL or journal:PATH (default: SQLite in --out)")
    search.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"])
    search.add_argument("--min-epochs", type=int, help="no trial is pruned before this epoch (default: the profile's "
                        "tuning.min_epochs)")
    search.add_argument("--multi-objective", action="store_true", help="NSGA-II on (val mAP, GFLOPs)")
    search.add_argument("--data", help="dataset spec")
    search.add_argument("--device", help="cpu, cuda, ...")
    search.add_argument("--out", help="results folder (default: results/<profile>)")
    parity = sub.add_parser("parity", help="plain YOLO: this harness vs ultralytics' own trainer, same settings")
    parity.add_argument("--model", default="yolov8n")
    parity.add_argument("--image-size", type=int, default=256)
    parity.add_argument("--epochs", type=int, default=30)
    parity.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parity.add_argument("--profile", default="default", help="profile whose data and YOLO recipe are used")
    parity.add_argument("--data", help="dataset spec")
    parity.add_argument("--device", help="cpu, cuda, ...")
    parity.add_argument("--out", default="results/parity", help="output folder")
    bench = sub.add_parser("bench", help="what the harness costs, against torchvision's loop and ultralytics' trainer")
    bench.add_argument("--profile", default="default", help="profile whose detectors and settings are measured")
    bench.add_argument("--data", help="dataset spec")
    bench.add_argument("--device", help="cpu, cuda, ...")
    bench.add_argument("--out", default="results/bench", help="output folder")
    bench.add_argument("--train-images", type=int, help="training images per measurement (default 96)")
    bench.add_argument("--skip-scaling", action="store_true", help="leave out the study wall-time scaling runs")
    rival = sub.add_parser("rival", help="ultralytics' own trainer, plain and with distill_model=, as rows of a study")
    rival.add_argument("--profile", default="yolo", help="profile whose YOLO teacher, student, seeds are used")
    rival.add_argument("--data", help="dataset spec")
    rival.add_argument("--device", help="cpu, cuda, ...")
    rival.add_argument("--out", help="results folder (default: results/<profile>)")
    tuned = sub.add_parser("tuned", help="search every method with the same budget, then the final rows (resumable)")
    tuned.add_argument("--profile", default="tuned", help="profile name (study/profiles) or YAML path")
    tuned.add_argument("--data", help="dataset spec")
    tuned.add_argument("--device", help="cpu, cuda, ...")
    tuned.add_argument("--out", help="results folder (default: results/<profile>)")
    tuned.add_argument("--storage", help="Optuna storage (default: SQLite in --out)")
    tuned.add_argument("--reuse", action="append", default=[], metavar="DIR",
                       help="copy finished runs with the same run ids (teachers, ...) from another results folder")
    replicate = sub.add_parser("replicate", help="compare a study with its rerun on disjoint seeds: REPLICATION.md")
    replicate.add_argument("--original", default="results/default", help="the original study's folder")
    replicate.add_argument("--replicate", default="results/replication", help="the rerun's folder")
    replicate.add_argument("--out", help="output file (default: ORIGINAL/REPLICATION.md)")
    replicate.add_argument("--profile", default="replication", help="the profile that made the rerun (for the "
                           "command written into the file)")
    frontier = sub.add_parser("frontier", help="write FRONTIER.md and its figures from a study's runs.csv")
    frontier.add_argument("--runs", required=True, help="a runs.csv (its detections/ beside it for the bootstrap)")
    frontier.add_argument("--out", help="output folder (default: the runs.csv's folder)")
    frontier.add_argument("--profile", default="frontier", help="profile whose data and report settings are used")
    frontier.add_argument("--data", help="dataset spec (default: the profile's)")
    report = sub.add_parser("report", help="write tables from a runs.csv")
    report.add_argument("--runs", required=True, help="a runs.csv")
    report.add_argument("--out", required=True, help="output folder")
    return parser


def cmd_run(args) -> int:
    from study.report import write_report
    from study.runner import Study
    from study.store import read_runs
    profile, out = profile_and_out(args)
    tuned = None
    if args.tuned:
        from study.search import load_tuned
        tuned = load_tuned(profile, out, args.storage)
        found = [f"{d} {m}" for d, methods in tuned.items() for m in methods]
        print(f"tuned hyperparameters for: {', '.join(found) or 'no method (no finished search)'}")
    if args.executor or args.address:
        profile["execution"] = profile["execution"] | {"executor": args.executor or "ray", "address": args.address}
    study = Study(profile, out, args.data, args.device, progress=not args.no_progress, workers=args.workers,
                  val_only=args.val_only)
    study.reuse(args.reuse, tuned)
    runs_csv = study.run(tuned=tuned)
    planned = {s.run_id for s in study.planned(tuned)}
    statuses = [r["status"] for r in read_runs(runs_csv) if r["run_id"] in planned]
    if statuses and all(s == "failed" for s in statuses):
        print(f"error: every run of the study failed ({len(statuses)}); the reasons are in {runs_csv}",
              file=sys.stderr)
        return 1
    if args.val_only:
        print(f"wrote {runs_csv}")
    else:
        print(f"wrote {runs_csv} and {write_report(runs_csv, out)}")
        if profile["report"]["frontier"]:
            print(f"wrote {write_frontier_of(study, runs_csv, out)}")
    return 0


def cmd_search(args) -> int:
    profile, out = profile_and_out(args)
    if (args.n_trials is None) == (args.budget_epochs is None):  # (search() says so too, as a bare ValueError)
        raise StudyError("give exactly one budget: n_trials or budget_epochs")
    from study.search import search as run_search
    st = run_search(profile, args.method, args.n_trials, out, args.storage, args.data, args.device,
                    args.pruner, args.multi_objective, detector=args.detector,
                    budget_epochs=args.budget_epochs, seed=args.seed, min_epochs=args.min_epochs)
    print(f"search '{st.study_name}': {len(st.trials)} trials in storage; report in {out / 'search'}")
    return 0


def need_at_least(args, least: dict[str, int]) -> None:
    """Refuse a numeric option below its least value (e.g. ``{"epochs": 1}``), naming the option, before any work."""
    for name, value in least.items():
        given = getattr(args, name)
        if given is not None and given < value:
            raise StudyError(f"--{name.replace('_', '-')} must be a whole number >= {value}, not {given}")


def cmd_bench(args) -> int:
    need_at_least(args, {"train_images": 1})
    profile, _ = profile_and_out(args)
    from study.bench.benchmarks import run_bench
    if "fcos" not in profile["detectors"]:
        profile["detectors"] = profile["detectors"] + ["fcos"]  # benchmarked even where a profile omits it
    settings = {"train_images": args.train_images} if args.train_images is not None else {}
    if args.skip_scaling:
        settings["scaling_base"] = None
    run_bench(profile, Path(args.out), args.data, args.device, settings)
    print(f"wrote {Path(args.out) / 'bench.md'} and bench.json")
    return 0


def cmd_parity(args) -> int:
    need_at_least(args, {"image_size": 32, "epochs": 1})
    if len(set(args.seeds)) < len(args.seeds):
        raise StudyError(f"--seeds must be distinct, not {' '.join(map(str, args.seeds))}")
    profile, _ = profile_and_out(args)
    from study.bench.parity import run_parity_seeds
    r = run_parity_seeds(profile, args.model, args.image_size, args.epochs, args.seeds, Path(args.out),
                         args.data, args.device)
    print(f"harness mAP {r['harness']['map_mean']:.3f}, ultralytics mAP {r['ultralytics']['map_mean']:.3f} "
          f"({r['difference_points_mean']:+.2f} points); wrote {Path(args.out) / 'parity.md'}")
    return 0


def cmd_tuned(args) -> int:
    profile, out = profile_and_out(args)
    from study.tuned import run_tuned
    print(f"wrote {run_tuned(profile, out, args.data, args.device, args.storage, reuse=args.reuse)}")
    return 0


def cmd_rival(args) -> int:
    profile, out = profile_and_out(args)
    from study.report import write_report
    from study.rival import run_rival
    from study.runner import Study
    runs_csv = run_rival(Study(profile, out, args.data, args.device, progress=False))
    print(f"wrote {runs_csv} and {write_report(runs_csv, out)}")
    return 0


def cmd_frontier(args) -> int:
    from study.runner import Study
    study = Study(profile_of(args.profile), Path(args.runs).parent, args.data, progress=False)
    print(f"wrote {write_frontier_of(study, Path(args.runs), Path(args.out or Path(args.runs).parent))}")
    return 0


def cmd_replicate(args) -> int:
    from study.replicate import write_replication
    out = Path(args.out) if args.out else Path(args.original) / "REPLICATION.md"
    command = (f"python -m study run --profile {args.profile} --out " + args.replicate +
               f" && python -m study replicate --original {args.original} --replicate {args.replicate}")
    print(f"wrote {write_replication(Path(args.original), Path(args.replicate), out, command)}")
    return 0


def cmd_report(args) -> int:
    if (Path(args.runs).parent / "tuning.json").exists():  # a tuned study's: its tuning section too
        from study.tuned import write_tuned_report
        print(f"wrote {write_tuned_report(Path(args.runs), Path(args.out))}")
    else:
        from study.report import write_report
        print(f"wrote {write_report(Path(args.runs), Path(args.out))}")
    return 0


COMMANDS = {"run": cmd_run, "search": cmd_search, "parity": cmd_parity, "bench": cmd_bench, "rival": cmd_rival,
            "tuned": cmd_tuned, "replicate": cmd_replicate, "frontier": cmd_frontier, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a :class:`StudyError` (an input the study cannot use: a profile, data, runs file, device
    or cluster address) is one line on stderr and exit code 2, anything else keeps its traceback."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
