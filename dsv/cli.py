"""``dsv-pipeline``: run | resume | verify | show | export | report | plugins. A thin layer over :mod:`dsv.pipeline`
and :mod:`dsv.store` (imported on first use, so ``--help`` and errors stay fast)."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import time
import warnings
from pathlib import Path

from dsv.errors import DsvError, Interrupted


def _add_plugin_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--disable-plugin",
        action="append",
        default=[],
        metavar="NAME",
        help="do not load this plugin (entry point name or built-in module); repeatable",
    )


def _add_process_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="run N processes on this machine (torch.distributed through ignite.distributed), "
        "sharing the candidate groups of synthesis.groups; under torchrun leave it at 1",
    )
    p.add_argument(
        "--backend",
        choices=("gloo", "nccl"),
        help="torch.distributed backend of a multi-process run (default: nccl with CUDA, else gloo)",
    )


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--json",
        action="store_true",
        help="end with the whole result as JSON (store, files written, seconds, summary) instead of a short summary",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show the libraries' log lines and warnings too (ignite's engine messages, dependency warnings)",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="dsv-pipeline", description="Deep Support Vectors of a trained classifier.")
    sub = top.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the stages of a pipeline file")
    run.add_argument("pipeline", help="pipeline TOML file")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a key, e.g. --set synthesis.iterations=50 (TOML value); repeatable",
    )
    run.add_argument("--store", help="run store path (default: run.store, or stores/<run.name>.zarr)")
    run.add_argument(
        "--fresh",
        action="store_true",
        help="replace an existing run store (only a dsv store); without it a store of the same config is resumed",
    )
    _add_output_flags(run)
    _add_plugin_flags(run)
    _add_process_flags(run)

    resume = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint")
    resume.add_argument("store", help="run store (its own stored config is used)")
    _add_output_flags(resume)
    _add_plugin_flags(resume)
    _add_process_flags(resume)

    verify = sub.add_parser("verify", help="check a run store: schema, commit record, every array")
    verify.add_argument("store", help="run store (a .zarr folder)")

    show = sub.add_parser("show", help="summarize a run store")
    show.add_argument("store", help="run store (a .zarr folder)")
    show.add_argument("--json", action="store_true", help="machine-readable summary")

    export = sub.add_parser("export", help="export a run store's candidates")
    export.add_argument("store", help="run store (a .zarr folder)")
    export.add_argument("--png", help="write a labelled image grid here")
    export.add_argument(
        "--dpi",
        type=int,
        default=100,
        help="the grid's resolution in dots per inch (default 100: 260 px per ImageNet cell)",
    )
    export.add_argument(
        "--colors",
        type=int,
        default=0,
        metavar="N",
        help="store the grid as a palette PNG of N colours (2 to 256), a fraction of the bytes; default: full colour",
    )
    export.add_argument("--npz", help="write arrays x, lambda, labels, alive, targets here")

    report = sub.add_parser("report", help="write a run store's report: one self-contained HTML file")
    report.add_argument("store", help="run store (a .zarr folder)")
    report.add_argument("-o", "--output", help="the HTML file to write (default: STORE/exports/report.html)")

    plugins = sub.add_parser("plugins", help="list plugins and every registered name by kind")
    _add_plugin_flags(plugins)
    return top


def run_pipeline(args):
    """The result of ``run`` in this process (None on a rank other than 0)."""
    from dsv.pipeline import Pipeline
    from dsv.plugins import get_plugin_manager

    pm = get_plugin_manager(args.disable_plugin)
    pipeline = Pipeline.from_toml(
        args.pipeline,
        overrides=args.overrides,
        store=args.store,
        plugins=pm,
        progress=not args.no_progress,
        fresh=args.fresh,
    )
    return pipeline.run()


def resume_pipeline(args):
    """The result of ``resume`` in this process (None on a rank other than 0)."""
    from dsv.pipeline import Pipeline
    from dsv.plugins import get_plugin_manager

    pm = get_plugin_manager(args.disable_plugin)
    return Pipeline.from_store(args.store, plugins=pm, progress=not args.no_progress).run()


def cmd_run(args) -> int:
    return _on_every_rank(run_pipeline, args)


def cmd_resume(args) -> int:
    return _on_every_rank(resume_pipeline, args)


def _on_every_rank(work, args) -> int:
    """``work(args)`` here, or on every rank of a multi-process run (``--nproc N`` or torchrun);
    the exit code is that of the first rank that failed."""
    from dsv.synthesis import distributed

    if args.nproc == 1 and not distributed.started_by_torchrun():
        started = time.perf_counter()
        return _report(work(args), args, time.perf_counter() - started)
    from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

    try:
        distributed.launch(_rank_main, work, args, nproc=args.nproc, backend=args.backend)
    except ProcessExitedException as exc:  # that rank printed its error; a negative code is a signal
        print(f"dsv-pipeline: {exc}", file=sys.stderr)
        return exc.exit_code if exc.exit_code > 0 else 128 - exc.exit_code
    except ProcessRaisedException as exc:
        print(f"dsv-pipeline: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _rank_main(local_rank: int, work, args) -> None:
    """One rank: rank 0 reports the result; a failure leaves the process with its exit code."""
    quiet_logs(args.verbose)
    started = time.perf_counter()
    code = _guarded(lambda: _report_if_any(work(args), args, time.perf_counter() - started))
    if code:
        raise SystemExit(code)


def _report_if_any(result, args, seconds: float) -> int:
    return _report(result, args, seconds) if result is not None else 0


def cmd_verify(args) -> int:
    from dsv.store.verify import describe, verify

    report = verify(args.store)
    describe(report)
    return 0 if report.ok else 1


def _report(result, args, seconds: float) -> int:
    """The end of ``run`` and ``resume``: a few lines for a person, or with ``--json`` the whole
    result as one JSON document."""
    from dsv.pipeline.ending import ending_lines

    if args.json:
        whole = {
            "store": str(result.store),
            "exports": [str(p) for p in result.exports],
            "seconds": round(seconds, 3),
            "summary": result.summary,
        }
        print(json.dumps(whole, indent=2))
        return 0
    lines = ending_lines(
        result.summary,
        store=result.store,
        exports=result.exports,
        seconds=seconds,
        name=result.name,
        stages=result.stages,
        source=result.source,
    )
    print("\n".join(lines))
    return 0


def _open(path: str):
    from dsv.store import RunStore

    return RunStore.open(path)


def cmd_show(args) -> int:
    from dsv.store import summary

    store = _open(args.store)
    store.check()  # a damaged store is refused, never summarized from fill values
    s = summary(store)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    meta = store.meta
    print(f"run {meta.get('name')} ({store.path})")
    print(f"  model {meta.get('model')}, config {meta.get('config_source')} [{meta.get('config_hash')}]")
    if "base_test_accuracy" in meta:
        print(f"  base model test accuracy {meta['base_test_accuracy']:.4f}")
    print(
        f"  iterations {s.get('iterations')}; candidates {s.get('candidates')}, alive {s.get('alive')}, "
        f"classified as target {s.get('classified_as_target', '?')}"
    )
    if "relative_stationarity" in s:
        print(f"  relative stationarity {s['relative_stationarity']:.4f} over {s['stationarity_params']} parameters")
    if s.get("entropy_start") is not None:
        print(f"  mean entropy {s['entropy_start']:.4f} -> {s['entropy_end']:.4f} nats")
    for key, value in store.results.items():
        text = json.dumps(value)
        print(f"  {key}: {text if len(text) <= 100 else text[:97] + '...'}")
    return 0


def cmd_export(args) -> int:
    from dsv.store.export import save_grid, save_npz

    if not (args.png or args.npz):
        raise DsvError("export: give --png PATH and/or --npz PATH")
    if not 10 <= args.dpi <= 600:
        raise DsvError(f"export: --dpi: expected 10 to 600, got {args.dpi}")
    if args.colors and not 2 <= args.colors <= 256:
        raise DsvError(f"export: --colors: expected 2 to 256 (or 0 for full colour), got {args.colors}")
    store = _open(args.store)
    store.check()
    if args.png:
        print(f"wrote {save_grid(store, args.png, dpi=args.dpi, colors=args.colors)}")
    if args.npz:
        print(f"wrote {save_npz(store, args.npz)}")
    return 0


def cmd_report(args) -> int:
    from dsv.store.report import write_report

    store = _open(args.store)
    target = Path(args.output) if args.output else store.export_path("report.html")
    if not target.parent.is_dir():
        raise DsvError(f"report: {target.parent}: no such folder")
    print(f"wrote {write_report(store, target)}")
    return 0


def cmd_plugins(args) -> int:
    from dsv.plugins import KINDS, DsvPluginManager

    pm = DsvPluginManager(disabled=args.disable_plugin, keep_broken=True)  # list a broken plugin, not stop
    for info in pm.plugins():
        origin = f"{info.distribution} {info.version}" + (", built-in" if info.builtin else "")
        print(f"{info.name}  [{origin}]")
        for kind, names in info.names.items():
            print(f"    {kind}: {', '.join(names)}")
        print(f"    hooks: {', '.join(info.hooks) or 'none'}")
    if args.disable_plugin:
        print(f"disabled: {', '.join(sorted(set(args.disable_plugin)))}")
    for name, message in pm.broken.items():
        print(f"{name}  [BROKEN, not loaded]\n    {message}")
    print()
    for kind in KINDS:
        entries = pm.registry(kind).entries()
        print(f"{kind}:" + ("" if entries else " none"))
        for e in entries:
            print(f"  {e.name:<22} {e.plugin}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "resume": cmd_resume,
    "verify": cmd_verify,
    "show": cmd_show,
    "export": cmd_export,
    "report": cmd_report,
    "plugins": cmd_plugins,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quiet_logs(getattr(args, "verbose", False))
    return _guarded(lambda: COMMANDS[args.command](args))


#: loggers whose INFO lines are dsv's own news for the user; every other library's reach the
#: console only from WARNING up, and not at all below ERROR for ignite (its engine start, epoch
#: and termination lines), unless --verbose
OWN_LOGGERS = ("dsv",)
QUIETED_LOGGERS = {"ignite": logging.ERROR}


def quiet_logs(verbose: bool) -> None:
    """The console's log lines: dsv's own at INFO; with ``verbose`` every library's at INFO and
    every warning. Without it, Python warnings raised outside dsv and its plugins (deprecations in
    a dependency a user cannot act on) are not shown."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    for name, level in QUIETED_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.INFO if verbose else level)
    if not verbose:
        warnings.showwarning = _show_own_warnings


_print_warning = warnings.showwarning


def _show_own_warnings(message, category, filename, lineno, file=None, line=None):
    """Show a warning raised by dsv's code or the user's (a plugin, a pipeline's module source);
    drop one raised inside an installed dependency (under site-packages, but not dsv)."""
    path = str(filename).replace("\\", "/")
    if "/site-packages/" in path and "/site-packages/dsv" not in path:
        logging.getLogger("dsv.dependencies").debug("%s:%s: %s: %s", filename, lineno, category.__name__, message)
        return
    _print_warning(message, category, filename, lineno, file, line)


def _guarded(command) -> int:
    """Run ``command()``; a dsv error, an interrupt or a plugin's failure becomes a message and an exit code."""
    try:
        return command()
    except Interrupted as exc:
        print(f"dsv-pipeline: {exc}", file=sys.stderr)
        return exc.exit_code
    except DsvError as exc:
        print(f"dsv-pipeline: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsv-pipeline: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(
            "dsv-pipeline: error: out of memory; lower synthesis.candidates_per_class or the resolutions, "
            "or split the candidates with synthesis.groups",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:  # raised in a third-party plugin's code: name the plugin, not a traceback
        os_error = _os_error(exc)
        if os_error is not None:  # disk full, no permission, read-only, a file where a folder must be
            logging.getLogger("asyncio").disabled = True  # zarr's pending writes would each log a line
            print(f"dsv-pipeline: error: {describe_os_error(os_error)}", file=sys.stderr)
            return 1
        from dsv.plugins import describe_plugin_failure

        message = describe_plugin_failure(exc)
        if message is None:
            raise  # a bug in dsv itself: the traceback is what a report needs
        print(f"dsv-pipeline: error: {message}", file=sys.stderr)
        return 2


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError ``exc`` is, or the first one inside an exception group."""
    if isinstance(exc, OSError):
        return exc
    inner_exceptions = getattr(exc, "exceptions", None)  # an exception group (Python 3.11+)
    if isinstance(inner_exceptions, (list, tuple)):
        for inner in inner_exceptions:
            found = _os_error(inner)
            if found is not None:
                return found
    return None


OS_ADVICE = {
    errno.ENOSPC: "no space left on its device; free some space",
    errno.EDQUOT: "disk quota exceeded; free some space",
    errno.EACCES: "permission denied; choose a path you may write to",
    errno.EPERM: "operation not permitted; choose a path you may write to",
    errno.EROFS: "read-only file system; choose a writable path",
    errno.ENOTDIR: "a part of this path is a file, not a folder; choose another path",
    errno.EISDIR: "is a folder, a file was expected",
}


def describe_os_error(exc: OSError) -> str:
    """One line: the path, what went wrong, what to do, and how to resume when the path lies in
    a run store that holds a checkpoint (a failed checkpoint leaves the previous one intact)."""
    path = exc.filename or ""
    advice = OS_ADVICE.get(exc.errno or -1, exc.strerror or str(exc))
    line = f"{path}: {advice}" if path else advice
    store = _enclosing_store(Path(str(path))) if path else None
    if store is not None:
        line += (
            f"; the last checkpoint is intact: resume with: dsv-pipeline resume {store}"
            if _has_checkpoint(store)
            else "; then run the pipeline again"
        )
    return line


def _enclosing_store(path: Path) -> Path | None:
    from dsv.store import is_store

    for folder in (path, *path.parents):
        if is_store(folder):
            return folder
    return None


def _has_checkpoint(path: Path) -> bool:
    from dsv.store import RunStore

    try:
        return all(r.record.get("state_slot") in ("a", "b") for r in RunStore.open(path).regions())
    except Exception:  # a store too damaged to tell: no promise of a checkpoint
        return False


if __name__ == "__main__":
    sys.exit(main())
