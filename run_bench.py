#!/usr/bin/env python
"""mmcl-bench command line: thin wrapper over bench/ (no logic here)."""
import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched unless the user asks for a hub id
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cmd_list(args):
    from bench.config import SEQUENCES_DIR
    from bench.registry import BACKBONES, METHODS, TASKS
    names = {"methods": METHODS.names, "tasks": TASKS.names, "backbones": BACKBONES.names,
             "sequences": lambda: sorted(p.stem for p in SEQUENCES_DIR.glob("*.yaml"))}[args.what]()
    print("\n".join(names))


def cmd_run(args):
    from bench import loggers
    from bench.config import parse_sets
    from bench.executors import summarize
    from bench.report import ReportOptions, write_report
    from bench.suite import run_suite
    if args.log is not None:  # workers inherit the choice (bench/loggers.py)
        os.environ[loggers.LOG_ENV] = ",".join(loggers.parse(args.log))
    report_options, sets = ReportOptions.from_sets(parse_sets(args.set))
    outcomes = run_suite(args.methods, args.seeds, sets, out=args.out, threads=args.threads,
                         workers=args.workers, executor=args.executor, rerun=args.rerun or None, sequence=args.sequence,
                         backbone=args.backbone, quick=args.quick)
    print(summarize(outcomes))
    failures = [o for o in outcomes if o.status == "failed"]
    report = write_report(args.out, report_options)
    print(report["table"].to_string(index=False))
    print(f"\nleaderboard: {report['paths'][1]} (.csv, .tex beside it); figures: {os.path.join(args.out, 'figures')}; "
          f"results page: {report['page']}")
    if failures:
        print(f"{len(failures)} run(s) failed; see the leaderboard's 'Failed runs'", file=sys.stderr)
        return 1
    return 0


def cmd_report(args):
    from bench.config import parse_sets
    from bench.errors import did_you_mean
    from bench.report import ReportOptions, write_report
    options, rest = ReportOptions.from_sets(parse_sets(args.set))
    if rest:
        raise did_you_mean(rest[0][0], ["figure_width"], "report --set key")
    report = write_report(args.out, options)
    print(report["table"].to_string(index=False))
    print(f"\nleaderboard: {report['paths'][1]}; results page: {report['page']}")


def cmd_status(args):
    from bench.status import format_statuses, run_statuses
    print(format_statuses(run_statuses(args.out)))


def cmd_perf(args):
    from pathlib import Path
    from bench.cache import default_cache_dir
    from bench.perf import Workload, main as perf
    from bench.runner import resolve_device
    wl = Workload(sequence=args.sequence, backbone=args.backbone, steps=args.steps, quick=args.quick,
                  threads=args.threads, device=resolve_device(args.device), repeats=args.repeats,
                  cache_dir=Path(args.cache_dir) if args.cache_dir else default_cache_dir(), scratch=Path(args.scratch))
    perf(wl, args.sections, estimate_leaderboard=args.estimate_leaderboard)


class OneLineErrorParser(argparse.ArgumentParser):
    """Command-line mistakes get the same one-line `error: ...` as every other bad input."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def main(argv=None):
    p = OneLineErrorParser(prog="run_bench.py", description="multimodal continual-learning benchmark")
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="list registered names")
    ls.add_argument("what", choices=["methods", "tasks", "sequences", "backbones"])
    run = sub.add_parser("run", help="run methods x seeds on a sequence, then write the report")
    run.add_argument("--sequence", default="default")
    run.add_argument("--methods", nargs="+", default=["all"],
                     help="method names, `all`, or `default`: the sequence's default set (`make leaderboard`)")
    run.add_argument("--backbone", default="default")
    run.add_argument("--seeds", nargs="+", type=int, default=[0])
    run.add_argument("--out", default="results")
    run.add_argument("--quick", action="store_true", help="cap data and steps: a smoke run in about a minute")
    run.add_argument("--rerun", action="store_true", help="train the runs again even when they are done")
    run.add_argument("--executor", default="local", help="local (process pool), slurm (submitit) or ray; "
                     "their options: --set slurm.partition=gpu, --set ray.address=auto, ...")
    run.add_argument("--threads", type=int, default=1, help="torch threads per run")
    run.add_argument("--workers", type=int, default=None, help="parallel runs (default: cores // threads)")
    run.add_argument("--log", default=None, metavar="NAMES",
                     help="experiment loggers, comma-separated: tensorboard, wandb (offline), mlflow (local store), jsonl")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field (lr=3e-4) or a method hyper-parameter (adapter.reduction=8)")
    rep = sub.add_parser("report", help="write leaderboard tables and figures from finished runs")
    rep.add_argument("--out", default="results")
    rep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="figure_width=3.3 (one-column paper figures) or 7 (two-column, the default)")
    st = sub.add_parser("status", help="list the runs of a results directory: finished, running, failed, pending")
    st.add_argument("--out", default="results")
    perf = sub.add_parser("perf", help="measure the harness: overhead vs a bare loop, vs Avalanche, caches, leaderboard time")
    perf.add_argument("--sequence", default="default")
    perf.add_argument("--backbone", default="default")
    perf.add_argument("--steps", type=int, default=None, help="training steps per task (default: the sequence's)")
    perf.add_argument("--quick", action="store_true", help="the sequence's --quick caps (a smoke run)")
    perf.add_argument("--threads", type=int, default=1, help="torch threads (the suite runs 1 per worker)")
    perf.add_argument("--device", default="auto")
    perf.add_argument("--repeats", type=int, default=2, help="best of N for the side-by-side timings")
    perf.add_argument("--sections", nargs="+", default=["a", "b", "c", "d", "e", "f"], choices=["a", "b", "c", "d", "e", "f", "g"],
                      help="a overhead, b avalanche, c cache, d leaderboard, e parallel, f precision (fp32 vs bf16), "
                           "g scale (memory at 1x and 8x data; not in the default set: it writes ~7 GB)")
    perf.add_argument("--estimate-leaderboard", action="store_true",
                      help="(d) extrapolated from short runs per method instead of measured (quicker, approximate)")
    perf.add_argument("--cache-dir", default=None, help="data cache (default: the shared cache)")
    perf.add_argument("--scratch", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "mmcl-perf"),
                      help="where the timed runs write (removed afterwards)")
    args = p.parse_args(argv)
    from bench.errors import BenchError
    try:
        return {"list": cmd_list, "run": cmd_run, "report": cmd_report, "status": cmd_status, "perf": cmd_perf}[args.cmd](args) or 0
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished tasks are checkpointed; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
