"""Command line: ``suite train|sweep|methods|report|figures|dashboard|bench|collect|prepare|baselines``.
Errors the user can fix print one line and exit 2."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .errors import ConfigError, SuiteError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other bad input
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _factors(text: str) -> list[float]:
    """Comma-separated compression factors, each a finite number >= 1."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v >= 1 for v in values):
        raise argparse.ArgumentTypeError(f"compression factors are numbers >= 1 (dense is 1), got {text!r}")
    return values


def _positive(text: str) -> int:
    """An integer >= 1 (workers, threads, steps, repetitions, sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _params_file(path: str | None) -> str | None:
    """A params.yaml named on the command line must exist (without one, the defaults apply)."""
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"no such params file: {path}")
    return path


def cmd_train(args) -> int:
    from .compressors.accounting import format_cf
    from .config import load_run, parse_sets
    from .pipeline import use_threads
    from .track import format_metric, locate, record_path
    from .train import find, train

    use_threads(args.threads)
    sets = parse_sets(args.set)
    for key, value in (("profile", args.profile), ("results_dir", args.results)):
        if value is not None:
            sets.setdefault(key, value)  # --profile smoke is --set profile=smoke, as for sweep and baselines
    cfg = load_run(args.preset, args.method, args.factor, args.seed, sets)
    if not args.force and (rec := find(cfg)) is not None:
        print(f"found finished run {rec.run_id}; use --force to redo it", file=sys.stderr)
    else:
        rec = train(cfg, force=args.force)
    path = record_path(locate(cfg.results_dir, cfg.task, cfg.method, cfg.run_id, cfg.store))
    if rec.status != "ok":
        print(f"run {rec.run_id} {rec.status}: {rec.reason} (record: {path})", file=sys.stderr)
        return 1
    acc = rec.accounting
    base = rec.timings.get("baseline_s")
    print(
        f"{rec.task} {rec.method} seed {rec.seed}: test {rec.metric} {format_metric(rec.test)}, val {rec.metric} "
        f"{format_metric(rec.val)}, CF {format_cf(acc['cf'])} (values only {format_cf(acc['cf_values'])}, whole model "
        f"{format_cf(acc['model_cf'])}), {rec.timings['wall_s']:.0f} s"
        + (f" (+ {base:.0f} s training its dense baseline)" if base else "")
        + f" -> {path}"
    )
    return 0


def cmd_methods(args) -> int:
    from . import plugins
    from .compressors import REGISTRY, registry

    for name in sorted(REGISTRY):
        m = REGISTRY[name]
        origin = plugins.origin("methods", name)
        print(
            f"{name:<14}{m.summary}" + (f" [plugin {origin['plugin']} {origin['version']}]" if origin else "")
        )
        if args.verbose:
            for field, kind, default, where, doc in registry.describe_settings(name):
                line = f"{'':<14}{field}: {kind} = {default!r}" + (f", {where}" if where else "")
                print(line + (f"  {doc}" if doc else ""))
    return 0


def cmd_report(args) -> int:
    from .files import check_dir, check_file
    from .leaderboard import report_text, write_docs
    from .report import load, runs_frame, summary, write_tables

    if args.out is not None:
        check_dir(args.out, "tables folder (--out)")
    if args.metrics is not None:
        check_file(args.metrics, "metrics file (--metrics)")
    if args.docs is not None:
        for path in write_docs(args.results, args.docs):
            print(f"-> {path}")
    if args.out is None:
        records, left_out = load(args.results, args.stale)
        print(report_text(summary(runs_frame(records)), left_out, args.results))
        return 0
    written, summ, left_out = write_tables(args.results, args.out, args.metrics, args.stale)
    print(report_text(summ, left_out, args.results))
    print(f"-> {', '.join(str(p) for p in written)}")
    return 0


def cmd_publish(args) -> int:
    from .publish import publish, refresh_fingerprints, stale_published

    if args.refresh:
        keys = refresh_fingerprints(args.results)
        print(
            f"results/published/behaviour.json: the current fingerprints of {len(keys)} (family, method) pair(s)"
        )
        return 0
    if args.stale:
        stale = stale_published(args.results)
        for rec, reason in stale:
            print(f"{rec.task} {rec.method} {rec.run_id}: {reason}\n  rerun: {rec.published.get('command')}")
        print(f"{len(stale)} stale published record(s)")
        return 0
    if not args.runs:
        raise ConfigError(
            "name the run folders to publish (results/runs/<task>/<method>/<run-id>), or --stale"
        )
    written, refused = publish(args.runs, args.results)
    for line in refused:
        print(f"error: {line}", file=sys.stderr)
    return 2 if refused else 0


def cmd_figures(args) -> int:
    from .figures import make_figures
    from .files import check_dir
    from .pipeline import load_params

    if not (Path(args.tables) / "summary.csv").is_file():
        raise ConfigError(
            f"no tables in {args.tables}; make them first with `suite report --out {args.tables}`"
        )
    options = load_params(_params_file(args.params)).figures
    check_dir(args.out, "figures folder (--out)")
    made = make_figures(args.tables, args.out, options)
    for name, (paths, note) in made.items():
        print(f"{name}: {', '.join(str(p) for p in paths) if paths else 'skipped: ' + note}")
    return 0


def cmd_dashboard(args) -> int:
    from .dashboard import dashboards

    made = dashboards(
        args.results,
        task=args.task,
        study=args.study,
        entity=args.entity,
        project=args.project,
        report_only=args.report,
        publish=args.publish,
        out=args.out,
    )
    kind = "report" if args.report else "workspace"
    for view, path in zip(made.views, made.files):
        print(f"{kind} {view.title} ({len(view.records)} runs) -> {path}")
    for url in made.urls:
        print(f"published: {url}")
    if not args.publish:
        names = ("results", "task", "study", "entity", "project", "out")
        flags = [f"--{k} {getattr(args, k)}" for k in names if getattr(args, k)]
        again = " ".join(["suite dashboard", *flags, *(["--report"] if args.report else []), "--publish"])
        print(f"offline definitions only; to publish: `wandb login`, then `{again}`")
    return 0


def cmd_sweep(args) -> int:
    from .config import parse_sets
    from .pipeline import load_params, use_threads
    from .settings import check
    from .sweep import devices, load_spec, run_sweep, status, work
    from .sweep.runner import location
    from .sweep.storage import retry_pending

    params = load_params(_params_file(args.params), args.profile) if args.params else None
    use_threads(args.threads if args.threads is not None else (params.threads if params else None))
    gpus = devices.parse(args.devices)
    workers = args.workers if args.workers is not None else (params.workers if params else None)
    if workers is None:  # one worker per device named, else one
        workers = len(gpus) if isinstance(gpus, list) else 1
    check("workers", workers, int, ge=1)
    sets = {**(params.set if params else {}), **parse_sets(args.set)}
    if args.results:
        sets["results_dir"] = args.results
    if args.store:
        sets["store"] = args.store
    spec = load_spec(args.spec, args.profile or (params.profile if params else None), sets)
    if args.status:
        print(_status(args, spec, sets))
        return 0
    if args.as_worker:
        try:
            work(spec, location(spec, args.storage))
        except KeyboardInterrupt:
            return 130  # the command that started this worker says so, once
        return 0
    argv = ["sweep", args.spec]
    for flag, value in (
        ("--storage", args.storage),
        ("--profile", args.profile),
        ("--params", args.params),
        ("--results", args.results),
        ("--threads", args.threads),
        ("--store", args.store),
    ):
        if value is not None:
            argv += [flag, str(value)]
    for item in args.set or []:
        argv += ["--set", item]
    study = run_sweep(spec, args.storage, workers, argv, gpus)
    print(status(spec, args.storage))
    left = retry_pending(study)
    if left:
        print(
            f"{left} trial(s) failed for a reason their settings do not decide (listed above as to retry); "
            "rerun the command to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


def _status(args, spec, sets: dict) -> str:
    """The study's status; without --profile, the one study of the spec that exists when the default's does
    not (a user who ran the smoke profile asks for its status as they ran it)."""
    from .sweep import load_spec, status

    try:
        return status(spec, args.storage)
    except ConfigError:
        if args.profile is not None or args.storage is not None:
            raise
        import yaml

        raw = yaml.safe_load(Path(args.spec).read_text()) or {}
        for other in ["paper", *(raw.get("profiles") or {})]:
            if other == spec.profile:
                continue
            try:
                text = status(load_spec(args.spec, other, sets), None)
            except ConfigError:
                continue
            print(
                f"note: no {spec.profile} study yet; this is the {other} one (--profile to choose)",
                file=sys.stderr,
            )
            return text
        raise


def cmd_export(args) -> int:
    from .export import export_run

    info = export_run(args.run, args.out, args.check)
    print(
        f"run {info['run_id']}: {info['bytes']:,} bytes on disk, {info['tensor_bytes']:,} in tensors, "
        f"{info['accounted_bytes']:,.0f} counted by the accounting (4 bytes a stored value or index)"
        + (
            f"; reloaded: max abs error {info['max_abs_error']:.3g} on a validation batch"
            if args.check
            else ""
        )
        + f" -> {info['path']}"
    )
    return 0


def cmd_collect(args) -> int:
    from .collect import collect

    done = collect(args.dirs, args.into)
    for note in done.notes:
        print(f"note: {note}", file=sys.stderr)
    print(done.summary())
    return 0


def cmd_prepare(args) -> int:
    from .files import check_file
    from .pipeline import prepare

    check_file(args.out, "description file (--out)")
    info = prepare(args.dataset, args.out, args.data_dir)
    facts = ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("dataset", "family", "seconds"))
    print(f"{args.dataset}: {facts} -> {args.out}")
    return 0


def cmd_baselines(args) -> int:
    from .files import check_file
    from .pipeline import baselines, load_params, use_threads
    from .track import format_metric

    params = load_params(_params_file(args.params), args.profile)
    check_file(args.out, "list of baselines (--out)")
    use_threads(params.threads)
    info = baselines(args.preset, params, args.out, args.store)
    for r in info["runs"]:
        m = r["metric"]
        print(
            f"{info['task']} dense seed {r['seed']}: test {m} {format_metric(r[f'test_{m}'])} ({r['run_id']})"
        )
    print(f"-> {args.out}")
    return 0


BENCH_FACTORS = {"train": [4.0, 8.0], "infer": [10.0, 25.0]}


def cmd_bench(args) -> int:
    from .bench import bench_infer, bench_train, format_infer, format_rows, infer_methods
    from .compressors import registry
    from .files import check_file
    from .pipeline import use_threads

    if args.methods:
        methods = args.methods.split(",")
    elif args.kind == "infer":
        methods = infer_methods()
    else:  # every method that builds without data (the compressed weights, or a resized model)
        methods = [m for m in registry.available() if m != "dense" and not registry.get(m).needs]
    factors = args.factors or BENCH_FACTORS[args.kind]
    out = check_file(Path(args.results) / "bench" / f"{args.kind}.json", "benchmark file")
    use_threads(args.threads)
    if args.kind == "train":
        res = bench_train(args.preset, methods, factors, steps=args.steps, device=args.device, out=out)
        print(f"training step, {res['preset']}, {res['threads']} threads, median of {res['steps']} steps")
        print(format_rows(res["rows"], "speed_vs_dense"))
    else:
        res = bench_infer(
            methods,
            factors,
            hidden=args.hidden,
            input_size=args.input,
            reps=args.reps,
            out=out,
            device=args.device,
        )
        shape = res["shape"]
        print(
            f"batch-1 LSTM step, hidden {shape['hidden']}, input {shape['input']}, "
            f"{'1 thread' if res['device'] == 'cpu' else res['device']}, median of "
            f"{res['reps']} x {res['inner']} steps"
        )
        print(format_infer(res["rows"]))
    print(f"-> {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="suite", description="Benchmark suite for compressed recurrent models.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train and evaluate one run")
    t.add_argument("preset", help="task preset, e.g. tasks/ptb-small.yaml")
    t.add_argument("--method", default="dense", help="compressor name (see `suite methods`)")
    t.add_argument("--factor", type=float, default=None, help="target compression factor")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override, e.g. profile=smoke, cmr=0.5"
    )
    t.add_argument("--profile", default=None, help="smoke or paper (default: the preset's paper settings)")
    t.add_argument("--results", default=None, help="results folder (default results)")
    t.add_argument("--force", action="store_true", help="redo a run that already finished")
    t.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("methods", help="list the registered compressors")
    m.add_argument("-v", "--verbose", action="store_true", help="also list each method's settings")
    m.set_defaults(func=cmd_methods)

    r = sub.add_parser("report", help="table of all finished runs; with --out, write the CSV tables")
    r.add_argument("--results", default="results")
    r.add_argument("--out", default=None, help="folder for runs.csv, summary.csv, epochs.csv, trials.csv")
    r.add_argument("--metrics", default=None, help="also write headline metrics as JSON (DVC metrics)")
    r.add_argument("--stale", action="store_true", help="also show runs of older code, marked stale")
    r.add_argument("--docs", default=None, help="write results.md and claims.md from the published records")
    r.set_defaults(func=cmd_report)

    pb = sub.add_parser("publish", help="copy finished full-scale runs into results/published (kept in git)")
    pb.add_argument(
        "runs", nargs="*", metavar="RUN_DIR", help="run folders (results/runs/<task>/<method>/<id>)"
    )
    pb.add_argument("--stale", action="store_true", help="list the published records of changed behaviour")
    pb.add_argument(
        "--refresh", action="store_true", help="keep the current code's fingerprints in results/published"
    )
    pb.add_argument("--results", default="results", help="the results tree whose published/ receives them")
    pb.set_defaults(func=cmd_publish)

    f = sub.add_parser("figures", help="paper figures (PNG and PDF) from the tables of `suite report --out`")
    f.add_argument("--tables", default="results/tables")
    f.add_argument("--out", default="results/figures")
    f.add_argument("--params", default=None, help="params.yaml (its figures: section)")
    f.set_defaults(func=cmd_figures)

    d = sub.add_parser(
        "dashboard", help="W&B workspaces (or a report) that compare methods, from the records"
    )
    d.add_argument("--results", default="results")
    d.add_argument("--task", default=None, help="only this task's runs (its own view and its studies')")
    d.add_argument("--study", default=None, help="only this study's runs")
    d.add_argument(
        "--entity", default=None, help="W&B entity (default: WANDB_ENTITY, else your default entity)"
    )
    d.add_argument(
        "--project", default=None, help="W&B project (default: WANDB_PROJECT, else compression-suite)"
    )
    d.add_argument("--report", action="store_true", help="a report per study (text and the same panels)")
    d.add_argument("--publish", action="store_true", help="save to W&B (needs `wandb login`)")
    d.add_argument(
        "--out", default=None, help="folder of the offline definitions (default: <results>/dashboards)"
    )
    d.set_defaults(func=cmd_dashboard)

    s = sub.add_parser("sweep", help="run, resume or inspect an Optuna study from a sweep spec")
    s.add_argument("spec", help="sweep spec, e.g. sweeps/ptb-small-tpe.yaml")
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes on this machine (default: one per device of --devices, else 1)",
    )
    s.add_argument(
        "--devices",
        default=None,
        help="CUDA devices for the workers, one each, round-robin: indices (0,1,...) or cpu "
        "(default: every visible GPU, else the CPU)",
    )
    s.add_argument(
        "--storage",
        default=None,
        help="an Optuna RDB URL (postgresql://user@host/db) or a journal "
        "file path (default: results/sweeps/<name>/journal.log)",
    )
    s.add_argument("--status", action="store_true", help="print the study's progress and best trials")
    s.add_argument("--profile", default=None, help="smoke or paper (default: the spec's, else paper)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="fixed setting of every run")
    s.add_argument("--params", default=None, help="take profile, workers and fixed settings from params.yaml")
    s.add_argument("--results", default=None, help="results folder (default results)")
    s.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per worker (default: params, else cores / workers)",
    )
    s.add_argument(
        "--store", default=None, help="sub-folder of results/runs for the trials' runs (pipeline stages)"
    )
    s.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_sweep)

    ex = sub.add_parser(
        "export", help="a finished run's compressed model as safetensors (run with checkpoint=true)"
    )
    ex.add_argument("run", metavar="RUN_DIR", help="results/runs/<task>/<method>/<run-id>")
    ex.add_argument(
        "--out", default=None, help="folder for <task>-<method>-<run-id>.safetensors (default: RUN_DIR)"
    )
    ex.add_argument(
        "--check", action="store_true", help="reload it and compare outputs on a validation batch"
    )
    ex.set_defaults(func=cmd_export)

    co = sub.add_parser("collect", help="merge the results trees of several machines into one, by run-id")
    co.add_argument("dirs", nargs="+", metavar="DIR", help="results folders (each holding runs/)")
    co.add_argument(
        "--into", default="results", help="the results folder that receives them (default results)"
    )
    co.set_defaults(func=cmd_collect)

    pr = sub.add_parser("prepare", help="load and cache a corpus, write its description (pipeline stage)")
    pr.add_argument("dataset", help="a dataset a task family loads (ptb, wikitext2, ...)")
    pr.add_argument("--out", required=True)
    pr.add_argument("--data-dir", default=None, help="default: SUITE_DATA_DIR")
    pr.set_defaults(func=cmd_prepare)

    bl = sub.add_parser("baselines", help="train the dense runs of a task for every seed (pipeline stage)")
    bl.add_argument("preset")
    bl.add_argument("--out", required=True)
    bl.add_argument("--params", default=None, help="params.yaml (profile, seeds, fixed settings)")
    bl.add_argument("--profile", default=None)
    bl.add_argument(
        "--store", default=None, help="sub-folder of results/runs for these runs (pipeline stages)"
    )
    bl.set_defaults(func=cmd_baselines)

    b = sub.add_parser("bench", help="speed benchmarks against dense, in one process")
    b.add_argument("kind", choices=sorted(BENCH_FACTORS), help="train: training step; infer: batch-1 step")
    b.add_argument(
        "--methods", help="comma-separated (default: every registered method the benchmark can time)"
    )
    b.add_argument("--factors", type=_factors, help="comma-separated CFs (train: 4,8; infer: 10,25)")
    b.add_argument("--preset", default="tasks/ptb-small.yaml", help="train: the task whose shapes are used")
    b.add_argument("--steps", type=_positive, default=30, help="train: timed steps")
    b.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index>")
    b.add_argument("--threads", type=int, default=None, help="train: torch threads (default: torch's choice)")
    b.add_argument("--hidden", type=_positive, default=650, help="infer: LSTM hidden size (ptb-medium: 650)")
    b.add_argument("--input", type=_positive, default=650, help="infer: LSTM input size")
    b.add_argument("--reps", type=_positive, default=300, help="infer: timed repetitions")
    b.add_argument("--results", default="results")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SuiteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one line: an unfinished run is discarded, an interrupted trial is retried
        print("interrupted; nothing unfinished was kept (rerun the command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
