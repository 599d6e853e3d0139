"""Command line: ``suite <command>`` (``suite --help`` lists them).

An option means the same on every command that takes it (shared parent parsers): ``--profile`` smoke or paper,
``--results`` the results folder (default ``results``), ``--set`` a fixed setting, ``--params`` params.yaml,
``--threads`` torch threads, ``--store`` a folder of results/runs; ``--out`` is always a folder. Errors the user
can fix print one line and exit 2."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .errors import ConfigError, SuiteError

RESULTS = "results"
"""The results folder of every command that reads or writes one, unless --results (or results_dir) names
another."""


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


def _out_folder(path: str, what: str) -> Path:
    """``--out``, a folder on every command; a file name (``*.json``) is refused rather than made a folder."""
    from .files import check_dir

    out = Path(path)
    if out.suffix == ".json" and not out.is_dir():
        raise ConfigError(f"--out is a folder, got the file name {path}; name the folder for the {what}")
    return check_dir(out, f"{what} folder (--out)")


def _overrides(args) -> dict:
    """``--set`` items, with --profile and --results as the settings they stand for (a --set of either wins)."""
    from .config import parse_sets

    sets = parse_sets(args.set)
    for key, value in (("profile", args.profile), ("results_dir", args.results)):
        if value is not None:
            sets.setdefault(key, value)
    return sets


def cmd_train(args) -> int:
    from .compressors.accounting import format_cf
    from .config import load_run
    from .pipeline import use_threads
    from .record import format_metric
    from .store import find, locate, record_path
    from .train import train

    use_threads(args.threads)
    cfg = load_run(args.preset, args.method, args.factor, args.seed, _overrides(args))
    if not args.force and (rec := find(cfg)) is not None:
        print(f"found finished run {rec.run_id}; use --force to redo it", file=sys.stderr)
    else:
        rec = train(cfg, force=args.force)
    folder = locate(cfg.results_dir, cfg.task, cfg.method, rec.run_id, cfg.store)
    path = record_path(folder) if folder else f"the published record {rec.run_id}"
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
    from .files import check_file
    from .leaderboard import report_text, write_docs
    from .report import load, runs_frame, summary, write_tables

    results = args.results or RESULTS
    if args.out is not None:
        _out_folder(args.out, "tables")
    if args.metrics is not None:
        check_file(args.metrics, "metrics file (--metrics)")
    if args.docs is not None:
        for path in write_docs(results, args.docs):
            print(f"-> {path}")
    if args.out is None:
        records, left_out = load(results, args.stale)
        print(report_text(summary(runs_frame(records)), left_out, results))
    else:
        written, summ, left_out = write_tables(results, args.out, args.metrics, args.stale)
        print(report_text(summ, left_out, results))
        print(f"-> {', '.join(str(p) for p in written)}")
    return 0


def cmd_publish(args) -> int:
    from .publish import DATA, publish, publish_bench, record_data, refresh_fingerprints, stale_published

    results = args.results or RESULTS
    if args.data:
        known = record_data(results, args.data_dir)
        print(f"{results}/published/{DATA}: the data fingerprints of {len(known)} task(s)")
        return 0
    if args.refresh:
        keys = refresh_fingerprints(results)
        print(
            f"results/published/behaviour.json: the current fingerprints of {len(keys)} (family, method) pair(s)"
        )
        return 0
    if args.stale:
        stale = stale_published(results)
        for rec, reason in stale:
            print(f"{rec.task} {rec.method} {rec.run_id}: {reason}\n  rerun: {rec.published.get('command')}")
        print(f"{len(stale)} stale published record(s)")
        return 0
    if not args.runs:
        raise ConfigError(
            "name the run folders to publish (results/runs/<task>/<method>/<run-id>), or --stale"
        )
    benches = [r for r in args.runs if str(r).endswith(".json")]
    written, refused = publish([r for r in args.runs if r not in benches], results)
    for path in benches:
        dest, why = publish_bench(path, results)
        if why:
            refused.append(why)
        else:
            print(f"published benchmark {path} -> {dest}")
    for line in refused:
        print(f"error: {line}", file=sys.stderr)
    return 2 if refused else 0


def cmd_figures(args) -> int:
    from .figures import make_figures
    from .pipeline import load_params

    if not (Path(args.tables) / "summary.csv").is_file():
        raise ConfigError(
            f"no tables in {args.tables}; make them first with `suite report --out {args.tables}`"
        )
    options = load_params(_params_file(args.params)).figures
    out = _out_folder(args.out or f"{RESULTS}/figures", "figures")
    made = make_figures(args.tables, out, options)
    for name, (paths, note) in made.items():
        print(f"{name}: {', '.join(str(p) for p in paths) if paths else 'skipped: ' + note}")
    return 0


def cmd_dashboard(args) -> int:
    from .dashboard import dashboards

    if args.out is not None:
        _out_folder(args.out, "dashboard definitions")
    chosen = {k: getattr(args, k) for k in ("task", "study", "entity", "project", "out")}
    made = dashboards(args.results or RESULTS, report_only=args.report, publish=args.publish, **chosen)
    kind = "report" if args.report else "workspace"
    for view, path in zip(made.views, made.files):
        print(f"{kind} {view.title} ({len(view.records)} runs) -> {path}")
    for url in made.urls:
        print(f"published: {url}")
    if not args.publish:
        flags = [f"--{k} {v}" for k, v in {"results": args.results, **chosen}.items() if v]
        again = " ".join(["suite dashboard", *flags, *(["--report"] if args.report else []), "--publish"])
        print(f"offline definitions only; to publish: `wandb login`, then `{again}`")
    return 0


def cmd_sweep(args) -> int:
    from .config import parse_sets
    from .pipeline import load_params, use_threads
    from .settings import check
    from .sweep import devices, launch, load_spec, run_sweep, work
    from .sweep.runner import location

    params = load_params(_params_file(args.params), args.profile) if args.params else None
    use_threads(args.threads if args.threads is not None else (params.threads if params else None))
    gpus = devices.parse(args.devices)
    workers = args.workers if args.workers is not None else (params.workers if params else None)
    if workers is None:  # one worker per device named, else one
        workers = len(gpus) if isinstance(gpus, list) else 1
    check("workers", workers, int, ge=1)
    sets = {**(params.set if params else {}), **parse_sets(args.set)}
    for key, value in (("results_dir", args.results), ("store", args.store)):
        if value:
            sets[key] = value
    spec = load_spec(args.spec, args.profile or (params.profile if params else None), sets)
    if args.status:
        print(launch.status_text(args.spec, spec, args.storage, sets, chosen=args.profile is not None))
        return 0
    if args.as_worker:
        try:
            work(spec, location(spec, args.storage))
        except KeyboardInterrupt:
            return 130  # the command that started this worker says so, once
        return 0
    study = run_sweep(spec, args.storage, workers, launch.worker_argv(args), gpus)
    print(launch.status_text(args.spec, spec, args.storage, sets, chosen=True))
    return launch.exit_code(study)


def cmd_export(args) -> int:
    from .export import export_run

    info = export_run(args.run, args.out and _out_folder(args.out, "exported file"), args.check)
    reloaded = (
        f"; reloaded: max abs error {info['max_abs_error']:.3g} on a validation batch" if args.check else ""
    )
    print(
        f"run {info['run_id']}: {info['bytes']:,} bytes on disk, {info['tensor_bytes']:,} in tensors, "
        f"{info['accounted_bytes']:,.0f} counted by the accounting (4 bytes a stored value or index){reloaded}"
        f" -> {info['path']}"
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
    from .pipeline import prepare

    out = _out_folder(args.out, "dataset description")
    path, info = prepare(args.dataset, out, args.data_dir)
    facts = ", ".join(
        f"{k} {v}" for k, v in info.items() if k not in ("dataset", "family", "seconds", "fingerprint")
    )
    print(f"{args.dataset}: {facts} -> {path}")
    return 0


def cmd_baselines(args) -> int:
    from .pipeline import baselines, load_params, use_threads
    from .record import format_metric

    params = load_params(_params_file(args.params), args.profile)
    out = _out_folder(args.out, "list of baselines")
    use_threads(params.threads)
    path, info = baselines(args.preset, params, out, args.store)
    for r in info["runs"]:
        m = r["metric"]
        print(
            f"{info['task']} dense seed {r['seed']}: test {m} {format_metric(r[f'test_{m}'])} ({r['run_id']})"
        )
    print(f"-> {path}")
    return 0


BENCH_FACTORS = {"train": [4.0, 8.0], "infer": [10.0, 25.0], "generate": [25.0], "decode": [10.0]}
GENERATE_METHODS = ["doped_kp", "kp", "lmf", "prune"]
GENERATE_PRESETS = "tasks/ptb-small.yaml,tasks/ptb-medium.yaml"
DECODE_PRESETS = "tasks/multi30k-small.yaml,tasks/fsdd-digits.yaml"


def _softmax(text: str) -> list[tuple[str, float] | None]:
    """``dense,groupreduce:8`` -> [None, ("groupreduce", 8.0)]."""
    forms = []
    for item in text.split(","):
        if item == "dense":
            forms.append(None)
            continue
        name, _, factor = item.partition(":")
        try:
            forms.append((name, float(factor)))
        except ValueError:
            raise ConfigError(f"--softmax takes dense or METHOD:CF items, got {item!r}") from None
    return forms


def cmd_bench(args) -> int:
    from .bench import (
        bench_decode,
        bench_generate,
        bench_infer,
        bench_train,
        format_decode,
        format_generate,
        format_infer,
        format_rows,
        infer_methods,
    )
    from .compressors import registry
    from .files import check_file
    from .pipeline import use_threads

    if args.methods:
        methods = args.methods.split(",")
    elif args.kind == "infer":
        methods = infer_methods()
    elif args.kind in ("generate", "decode"):
        methods = GENERATE_METHODS
    else:  # every method that builds without data (the compressed weights, or a resized model)
        methods = [m for m in registry.available() if m != "dense" and not registry.get(m).needs]
    factors = args.factors or BENCH_FACTORS[args.kind]
    out = check_file(Path(args.results or RESULTS) / "bench" / f"{args.kind}.json", "benchmark file")
    use_threads(args.threads)
    if args.kind == "decode":
        res = bench_decode((args.preset or DECODE_PRESETS).split(","), methods, factors, out=out)
        print(
            f"batch-1 decoding of exported models, 1 thread, median over {res['items']} test items x {res['reps']}"
        )
        print(format_decode(res))
    elif args.kind == "generate":
        res = bench_generate(
            (args.preset or GENERATE_PRESETS).split(","), methods, factors, _softmax(args.softmax), out=out
        )
        print(f"batch-1 greedy generation, 1 thread, median of {res['reps']} x {res['tokens']} tokens")
        print(format_generate(res))
    elif args.kind == "train":
        res = bench_train(
            args.preset or "tasks/ptb-small.yaml",
            methods,
            factors,
            steps=args.steps,
            device=args.device,
            out=out,
        )
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
        print(format_infer(res))
    print(f"-> {out}")
    return 0


def _shared() -> dict[str, argparse.ArgumentParser]:
    """The options several commands take, each defined once (argparse parent parsers)."""
    options = {
        "profile": dict(
            help="smoke or paper (default: params.yaml's with --params, else the preset's paper)"
        ),
        "results": dict(metavar="DIR", help=f"the results folder (default {RESULTS})"),
        "set": dict(action="append", metavar="KEY=VALUE", help="a fixed setting of every run, e.g. cmr=0.5"),
        "params": dict(metavar="FILE", help="params.yaml (profile, seeds, workers, threads, set, figures)"),
        "threads": dict(
            type=int, help="torch threads per process (default: params', else torch's or cores/workers)"
        ),
        "store": dict(help="sub-folder of results/runs for these runs (pipeline stages)"),
    }
    parents = {}
    for name, kwargs in options.items():
        parents[name] = argparse.ArgumentParser(add_help=False)
        parents[name].add_argument(f"--{name}", default=None, **kwargs)
    return parents


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="suite", description="Benchmark suite for compressed recurrent models.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    shared = _shared()

    def command(name: str, func, help: str, options: str = "") -> argparse.ArgumentParser:
        """A subcommand taking the shared ``options`` (space-separated names)."""
        parser = sub.add_parser(name, help=help, parents=[shared[k] for k in options.split()])
        parser.set_defaults(func=func)
        return parser

    t = command("train", cmd_train, "train and evaluate one run", "profile results set threads")
    t.add_argument("preset", help="task preset, e.g. tasks/ptb-small.yaml")
    t.add_argument("--method", default="dense", help="compressor name (see `suite methods`)")
    t.add_argument("--factor", type=float, default=None, help="target compression factor")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--force", action="store_true", help="redo a run that already finished")

    m = command("methods", cmd_methods, "list the registered compressors")
    m.add_argument("-v", "--verbose", action="store_true", help="also list each method's settings")

    r = command("report", cmd_report, "table of all finished runs; with --out, the CSV tables", "results")
    r.add_argument("--out", help="folder for runs.csv, summary.csv, epochs.csv, trials.csv, ...")
    r.add_argument("--metrics", help="also write headline metrics to this JSON file (DVC metrics)")
    r.add_argument("--stale", action="store_true", help="also show runs of older code, marked stale")
    r.add_argument("--docs", help="write results.md and claims.md from the published records")

    pb = command("publish", cmd_publish, "copy finished full-scale runs into results/published", "results")
    pb.add_argument(
        "runs",
        nargs="*",
        metavar="RUN_DIR",
        help="results/runs/<task>/<method>/<run-id>, or a benchmark's JSON (results/bench/infer.json)",
    )
    pb.add_argument("--stale", action="store_true", help="list the published records of changed behaviour")
    pb.add_argument("--refresh", action="store_true", help="keep the current code's behaviour fingerprints")
    pb.add_argument(
        "--data", action="store_true", help="keep the fingerprints of the published records' data"
    )
    pb.add_argument("--data-dir", help="with --data: the folder of that data (default: SUITE_DATA_DIR)")

    f = command(
        "figures", cmd_figures, "paper figures (PNG, PDF) from the tables of `suite report`", "params"
    )
    f.add_argument("--tables", default=f"{RESULTS}/tables", help=f"tables folder (default {RESULTS}/tables)")
    f.add_argument("--out", help=f"folder for the figures (default {RESULTS}/figures)")

    d = command("dashboard", cmd_dashboard, "W&B workspaces (or reports) that compare methods", "results")
    d.add_argument("--task", help="only this task's runs (its own view and its studies')")
    d.add_argument("--study", help="only this study's runs")
    d.add_argument("--entity", help="W&B entity (default: WANDB_ENTITY, else your default entity)")
    d.add_argument("--project", help="W&B project (default: WANDB_PROJECT, else compression-suite)")
    d.add_argument("--report", action="store_true", help="a report per study (text and the same panels)")
    d.add_argument("--publish", action="store_true", help="save to W&B (needs `wandb login`)")
    d.add_argument("--out", help="folder of the offline definitions (default: <results>/dashboards)")

    s = command(
        "sweep",
        cmd_sweep,
        "run, resume or inspect an Optuna study",
        "profile results set params threads store",
    )
    s.add_argument("spec", help="sweep spec, e.g. sweeps/ptb-small-tpe.yaml")
    s.add_argument(
        "--workers", type=int, help="worker processes (default: params', else one per device, else 1)"
    )
    s.add_argument(
        "--devices", help="CUDA devices, one per worker in turn: 0,1,... or cpu (default: all GPUs)"
    )
    s.add_argument("--storage", help="journal file or RDB URL (default <results>/sweeps/<name>/journal.log)")
    s.add_argument("--status", action="store_true", help="print the study's progress and best trials")
    s.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)

    ex = command("export", cmd_export, "a finished run's compressed model as safetensors (checkpoint=true)")
    ex.add_argument("run", metavar="RUN_DIR", help="results/runs/<task>/<method>/<run-id>")
    ex.add_argument("--out", help="folder for <task>-<method>-<run-id>.safetensors (default: RUN_DIR)")
    ex.add_argument(
        "--check", action="store_true", help="reload it and compare outputs on a validation batch"
    )

    co = command("collect", cmd_collect, "merge the results trees of several machines into one, by run-id")
    co.add_argument("dirs", nargs="+", metavar="DIR", help="results folders (each holding runs/)")
    co.add_argument(
        "--into", default=RESULTS, help=f"the results folder that receives them (default {RESULTS})"
    )

    pr = command("prepare", cmd_prepare, "load and cache a corpus, write its description (pipeline stage)")
    pr.add_argument("dataset", help="a dataset a task family loads (ptb, wikitext2, ...)")
    pr.add_argument("--out", required=True, help="folder for <dataset>.json")
    pr.add_argument("--data-dir", help="default: SUITE_DATA_DIR")

    bl = command(
        "baselines", cmd_baselines, "train a task's dense runs (pipeline stage)", "profile params store"
    )
    bl.add_argument("preset")
    bl.add_argument("--out", required=True, help="folder for <task>.json, the list of the runs")

    b = command("bench", cmd_bench, "speed benchmarks against dense, in one process", "results threads")
    b.add_argument(
        "kind",
        choices=sorted(BENCH_FACTORS),
        help="train: training step; infer: batch-1 LSTM step; generate: batch-1 greedy decoding of a whole LM; "
        "decode: batch-1 translation and speech decoding of exported models",
    )
    b.add_argument("--methods", help="comma-separated (default: every method the benchmark can time)")
    b.add_argument(
        "--factors",
        type=_factors,
        help="comma-separated CFs (train: 4,8; infer: 10,25; generate, decode: 25, 10)",
    )
    b.add_argument(
        "--preset",
        help="the task whose shapes are used (train: tasks/ptb-small.yaml; generate and decode: comma-separated, "
        f"defaults {GENERATE_PRESETS} and {DECODE_PRESETS})",
    )
    b.add_argument(
        "--softmax",
        default="dense,groupreduce:8,svd:8",
        help="generate: the softmax forms, comma-separated `dense` or METHOD:CF",
    )
    b.add_argument("--steps", type=_positive, default=30, help="train: timed steps")
    b.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index>")
    b.add_argument("--hidden", type=_positive, default=650, help="infer: LSTM hidden size (ptb-medium: 650)")
    b.add_argument("--input", type=_positive, default=650, help="infer: LSTM input size")
    b.add_argument("--reps", type=_positive, default=300, help="infer: timed repetitions")
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
