"""The `kiln` command: parses arguments (typer), calls kiln's public API, renders with rich.

Library errors arrive as KilnError and leave as one line on stderr and an exit code; a user's
mistake never shows a traceback.
"""

# No `from __future__ import annotations`: typer would compile and evaluate every command's
# parameter annotations at start-up (7 ms of every command's, so every rollout's, overhead);
# names that exist only for the type checker are quoted.
import gc as _gc
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console

    import kiln

app = typer.Typer(
    name="kiln",
    help="Disposable, immutable infrastructure: bake, prove, canary, roll back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

T = TypeVar("T")

# Help shows an argument's metavar (SERVICE, [IMAGE]...), not its Python type (<list[str]>).
setattr(typer.core.TyperArgument, "display_type_rich", lambda self, ctx: None)  # noqa: B010


class _Opts:
    file: Path | None = None
    quiet: bool = False


OPTS = _Opts()
_console: "Console | None" = None
_err: "Console | None" = None


def out() -> "Console":
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(highlight=False)
        if not _console.is_terminal:
            _console.soft_wrap = True  # piped: whole lines, never wrapped at 80 columns
    return _console


def width() -> int | None:
    """The terminal's width for tables, or None when piped (full lines)."""
    console = out()
    return console.width if console.is_terminal else None


def err() -> "Console":
    global _err
    if _err is None:
        from rich.console import Console

        _err = Console(stderr=True, highlight=False)
    return _err


def warn(msg: str) -> None:
    err().print(f"[yellow]warning:[/] {msg}", markup=True, soft_wrap=not err().is_terminal)


def say_error(line: str) -> None:
    """One error line on stderr: whole on a pipe (scripts grep it), folded at words to the
    width of a terminal, continuation lines indented."""
    import textwrap

    try:
        cols = os.get_terminal_size(sys.stderr.fileno()).columns if sys.stderr.isatty() else 0
    except (OSError, ValueError):
        cols = 0
    if cols >= 20 and len(line) > cols:
        line = "\n".join(textwrap.wrap(line, cols, subsequent_indent="  ",
                                        break_on_hyphens=False))
    sys.stderr.write(line + "\n")


def fail(message: str, code: int) -> typer.Exit:
    say_error(f"kiln: {message}")
    return typer.Exit(code)


def json_mode() -> bool:
    """--json was given to this command (then errors go to stdout as JSON too)."""
    args = sys.argv[1:]
    return "--json" in (args[:args.index("--")] if "--" in args else args)


def json_error(kind: str, message: str, code: int, hint: str | None = None,
               problems: list[str] | None = None) -> typer.Exit:
    """The error document of docs/json.md, on stdout; the one line still goes to stderr."""
    doc: dict[str, Any] = {"error": {"kind": kind, "message": message, "hint": hint,
                                     "exit_code": code}}
    if problems is not None:
        doc["error"]["problems"] = problems
    print_json(doc)
    return fail(f"{'rolled back' if kind == 'RolledBack' else 'error'}: {message}"
                + (f" ({hint})" if hint else ""), code)


def guard(fn: Callable[[], T]) -> T:
    """Run a command body: KilnError -> one line + its exit code; ^C -> 130. With --json the
    error is also a JSON document on stdout, so a script reads one stream."""
    import sqlite3

    import kiln

    try:
        try:
            return fn()
        except sqlite3.Error as exc:  # a state error past the store's funnels: still one line
            from kiln.state.store import state_error

            raise state_error(exc, None) from exc
    except kiln.SpecError as exc:
        if json_mode():
            print_json({"error": {"kind": "SpecError", "message": exc.problems[0] if
                                  exc.problems else str(exc), "hint": None,
                                  "exit_code": exc.exit_code, "problems": exc.problems}})
        for line in exc.problems:
            say_error(line)
        raise typer.Exit(exc.exit_code) from None
    except kiln.KilnError as exc:
        if json_mode():
            raise json_error(type(exc).__name__, exc.message, exc.exit_code, exc.hint) from None
        if isinstance(exc, kiln.RolledBack):
            raise fail(str(exc), exc.exit_code) from None  # "web web-r3 rolled back: 5xx 21% vs 0%"
        raise fail(f"error: {exc}", exc.exit_code) from None
    except KeyboardInterrupt:
        if json_mode():
            raise json_error("Interrupted", "interrupted", 130) from None
        raise fail("interrupted", 130) from None


def use_file(file: Path | None) -> None:
    """`-f/--file` works after the command name too (kiln deploy -f other.yaml)."""
    if file is not None:
        OPTS.file = file


_OPENED: "list[kiln.Project]" = []
_AT_EXIT: list[bool] = []  # the closer is registered once


def _close_opened() -> None:
    while _OPENED:
        _OPENED.pop().close()


def project() -> "kiln.Project":
    import atexit

    import kiln

    # One command, one project. A project an earlier command opened in this process (tests run
    # many in-process) is closed now rather than kept, with its database's descriptors, to exit.
    if not _AT_EXIT:
        atexit.register(_close_opened)
        _AT_EXIT.append(True)
    _close_opened()
    proj = kiln.Project.open(OPTS.file, warn=warn)
    if not _gc.isenabled():
        # Start-up is over (run() disabled the collector); a deploy or `kiln serve` runs long.
        # What start-up made (modules, classes, the spec) lives until exit: frozen, it is never
        # scanned, so enabling does not start with a collection of ~70k young objects (~10 ms
        # of every rollout's overhead) and later full collections stay small.
        _gc.freeze()
        _gc.enable()
    # At exit: the `notify:` webhooks' queue is delivered (bounded) and the deliveries that
    # failed are recorded for `status`, instead of dying with the process's daemon thread.
    _OPENED.append(proj)
    return proj


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def print_json_line(data: Any) -> None:
    """One JSON document per line (`--watch --json`): a reader parses each line as it comes."""
    sys.stdout.write(json.dumps(data, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def version_cb(value: bool) -> None:
    if value:
        from kiln import __version__

        sys.stdout.write(f"kiln {__version__}\n")
        raise typer.Exit(0)


_FILE_HELP = "Spec file (default: ./kiln.yaml)."
FileOpt = Annotated[Path | None, typer.Option("--file", "-f", metavar="PATH", help=_FILE_HELP)]
FileLongOpt = Annotated[Path | None, typer.Option("--file", metavar="PATH", help=_FILE_HELP)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (see docs/json.md).")]


@app.callback()
def main(
    file: FileOpt = None,
    version: Annotated[bool, typer.Option("--version", callback=version_cb, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """kiln bakes images from code, proves them, and rolls them out behind a real router."""
    OPTS.file = file


# ------------------------------------------------------------------ spec


@app.command()
def validate(file: FileOpt = None, as_json: JsonOpt = False) -> None:
    """Check kiln.yaml; print ok or every problem as file:line:col: path: message."""
    from kiln.platforms.local.mirror_ports import check_mirror_ports
    from kiln.spec.files import check_files
    from kiln.spec.loader import find_spec, found_above, load_spec
    from kiln.state.store import default_home

    def body() -> None:
        path = find_spec(Path.cwd(), file or OPTS.file)
        if found_above(path):
            warn(f"using {path} (found in a folder above this one)")
        loaded = load_spec(path)
        check_files(loaded)
        check_mirror_ports(loaded, default_home(loaded.base_dir))
        warnings = [f"{loaded.path}: {line}" for line in loaded.spec.warnings()]
        for line in warnings:
            warn(line)
        if as_json:
            print_json({"ok": True, "file": str(loaded.path), "warnings": warnings})
        else:
            sys.stdout.write("ok\n")

    guard(body)


@app.command()
def schema() -> None:
    """Print the JSON Schema of kiln.yaml (for editors)."""
    from kiln.spec.schema import json_schema

    print_json(json_schema())


@app.command()
def init(folder: Annotated[Path, typer.Argument(help="Folder to create the project in.")] = Path(".")
         ) -> None:
    """Write a starter kiln.yaml and a tiny app into an empty folder."""
    from kiln.spec.init import init_project

    def body() -> None:
        for path in init_project(folder):
            out().print(f"created {path}")
        out().print("next: kiln validate && kiln bake && kiln deploy")

    guard(body)


# ------------------------------------------------------------------ images


@app.command()
def bake(
    images: Annotated[list[str] | None, typer.Argument(
        metavar="[IMAGE]...", help="Images to bake (default: all).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Rebuild every step.")] = False,
    as_json: JsonOpt = False,
    file: FileOpt = None,
) -> None:
    """Bake images; unchanged steps come from the cache."""
    use_file(file)
    from kiln_cli.progress import StepPrinter

    def body() -> None:
        proj = project()
        printer = StepPrinter(out(), quiet=as_json)
        t0 = time.perf_counter()
        try:
            built = proj.bake(images, no_cache=no_cache, progress=printer)
        finally:
            printer.area.stop()
        if as_json:
            print_json([{"name": i.name, "digest": i.digest, "ref": i.ref} for i in built])
            return
        for i in built:
            out().print(f"[bold]{i.name}[/] {i.digest}  ({time.perf_counter() - t0:.2f}s)")

    guard(body)


@app.command("images")
def images_cmd(as_json: JsonOpt = False,
        file: FileOpt = None) -> None:
    """List the image store with each image's test verdict."""
    use_file(file)
    from kiln_cli.render import images_table

    def body() -> None:
        rows = project().list_images()
        if as_json:
            print_json(rows)
        else:
            out().print(images_table(rows, width()))

    guard(body)


@app.command()
def test(
    images: Annotated[list[str] | None, typer.Argument(
        metavar="[IMAGE]...", help="Images to test (default: all).")] = None,
    as_json: JsonOpt = False,
    file: FileOpt = None,
) -> None:
    """Bake if needed, launch a throwaway instance, run the image's checks, dispose of it."""
    use_file(file)
    from kiln.verify.api import test_images
    from kiln_cli.progress import test_line

    def body() -> None:
        proj = project()
        results = test_images(proj, images,
                              on_line=None if as_json else lambda s: out().print(test_line(s)))
        if as_json:
            print_json(results)
        if not all(r["passed"] for r in results):
            raise typer.Exit(1)

    guard(body)


# ------------------------------------------------------------------ deploy


@app.command()
def plan(services: Annotated[list[str] | None, typer.Argument(
             metavar="[SERVICE]...", help="Services (default: all).")] = None,
         as_json: JsonOpt = False,
         detailed_exitcode: Annotated[bool, typer.Option(
             "--detailed-exitcode", help="Exit 0 when nothing would change, 2 when deploy "
                                         "would change something (1 on errors).")] = False,
         file: FileOpt = None) -> None:
    """Show what deploy would do, without doing it."""
    use_file(file)
    from rich.text import Text

    from kiln.plan import plan as make_plan

    def body() -> None:
        items = make_plan(project(), services)
        if as_json:
            print_json(items)
        else:
            for it in items:
                out().print(Text(f"{it['service']}: ", style="bold").append(
                    f"{it['action']}  {it['detail']}"), soft_wrap=not out().is_terminal)
                if it.get("evidence"):
                    from kiln.plan_evidence import estimate_words

                    out().print(f"  {estimate_words(it['evidence'])}", highlight=False,
                                soft_wrap=not out().is_terminal)
                warning = (it.get("evidence") or {}).get("warning")
                if warning:
                    out().print(Text(f"warning: {warning}", style="yellow"), soft_wrap=not out().is_terminal)
        if detailed_exitcode and any(it["action"] != "unchanged" for it in items):
            raise typer.Exit(2)

    guard(body)


@app.command()
def deploy(
    services: Annotated[list[str] | None, typer.Argument(metavar="[SERVICE]...",
                                                         help="Services (default: all).")] = None,
    skip_tests: Annotated[bool, typer.Option("--skip-tests",
                                             help="Deploy without a passing attestation "
                                                  "(recorded in history).")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Rebuild every step.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Deploy again an image and config that "
                                                         "was just rolled back.")] = False,
    detach: Annotated[bool, typer.Option(
        "--detach", "-d", help="Return once the rollout is under way; it goes on in the "
                               "background (follow it with `kiln status --watch`).")] = False,
    preview: Annotated[bool, typer.Option(
        "--preview", help="Launch and test the new release, then send it only requests with "
                          "`X-Kiln-Release: <release>` (header or cookie) until `kiln promote`; "
                          "`kiln abort` disposes of it.")] = False,
    as_json: JsonOpt = False,
    file: FileOpt = None,
) -> None:
    """Bake, test and roll out what changed; returns when the rollout has settled."""
    use_file(file)
    from kiln_cli.progress import DeployPrinter

    def body() -> None:
        proj = project()
        if detach:
            from kiln_cli.detach import deploy_detached

            args = [*(["-f", str(OPTS.file)] if OPTS.file else []), "deploy", *(services or []),
                    *(["--skip-tests"] if skip_tests else []), *(["--no-cache"] if no_cache else []),
                    *(["--force"] if force else []), *(["--preview"] if preview else [])]
            code = deploy_detached(
                args, Path.cwd(), proj.home, proj.status,
                (lambda line: None) if as_json else (lambda line: print(line, flush=True)),
                started=print_json if as_json else None)
            if code:
                raise typer.Exit(code)
            return
        printer = DeployPrinter(out(), quiet=as_json)
        try:
            result = proj.deploy(services, skip_tests=skip_tests, on_event=printer,
                                 no_cache=no_cache, force=force, preview=preview)
        except KeyboardInterrupt:
            printer.stop()
            raise interrupted(proj) from None
        finally:
            printer.stop()
        if as_json:
            print_json([vars(s) for s in result.services])
        else:
            printer.summary(result)
        exit_for(result)

    guard(body)


def exit_for(result: "kiln.DeployResult") -> None:
    """Exit 3 (one line on stderr) when a service was rolled back; the result is already out."""
    from kiln import RolledBack, raise_for

    try:
        raise_for(result)
    except RolledBack as exc:
        raise fail(str(exc), exc.exit_code) from None  # "web web-r3 rolled back: 5xx 21% vs 0%"


def interrupted(proj: "kiln.Project") -> typer.Exit:
    """^C during a rollout: say where traffic stands and how to go on (exit 130)."""
    lines = ["interrupted"]
    try:
        data = proj.status()
    except Exception:  # the state may be mid-change; the plain message still helps
        data = {"services": []}
    for svc in data["services"]:
        ro = svc.get("rollout") or {}
        weights = ", ".join(f"{r['release']} {r['weight']}%" for r in svc["releases"]
                            if r["weight"]) or "no release"
        name = svc["service"]
        if ro and ro.get("phase") not in ("done", None):
            lines.append(f"{name}: rollout #{ro['rollout_id']} stopped in {ro['phase']}; traffic: "
                         f"{weights}. `kiln deploy {name}` resumes it, `kiln abort {name}` "
                         f"rolls it back, `kiln status {name} --watch` follows it")
        else:
            lines.append(f"{name}: traffic: {weights}")
    return fail("\n  ".join(lines), 130)


@app.command()
def status(service: Annotated[str | None, typer.Argument(metavar="[SERVICE]",
                                                        help="Service (default: all).")] = None,
           as_json: JsonOpt = False,
           watch: Annotated[bool, typer.Option(
               "--watch", "-w", help="Follow open rollouts until they settle (exit 3 if one "
                                     "was rolled back).")] = False,
    file: FileOpt = None,
           ) -> None:
    """Releases, weights, instances and the rollout step of each service."""
    use_file(file)
    from kiln_cli.render import status_view

    def body() -> None:
        if watch:
            code = watch_rollouts(project(), service, as_json)
            if code:
                raise typer.Exit(code)
            return
        data = project().status(service)
        if as_json:
            print_json(data)
        else:
            out().print(status_view(data, width()))

    guard(body)


def watch_rollouts(proj: "kiln.Project", service: str | None, as_json: bool) -> int:
    """`status --watch`: JSON lines, lines redrawn in place on a terminal, or a line per change."""
    from kiln.state.lock import live_holder
    from kiln_cli.detach import watch as follow
    from kiln_cli.progress import LiveArea
    from kiln_cli.render import status_view

    def busy() -> str | None:
        holder = live_holder(proj.store)
        acting = ("deploy", "rollback", "promote", "abort")
        return holder.describe() if holder and holder.command.startswith(acting) else None

    def status() -> dict[str, Any]:
        return proj.status(service)

    if as_json:
        return follow(status, lambda line: None, documents=print_json_line, busy=busy)
    console = out()
    if not console.is_terminal:
        code = follow(status, lambda line: print(line, flush=True), busy=busy)
        console.print(status_view(proj.status(service), width()))
        return code
    from rich.console import Group
    from rich.text import Text

    area = LiveArea(console)
    current: list[str] = []

    def redraw(lines: list[str]) -> None:
        current[:] = lines
        area.show(lambda: Group(*(Text(line, overflow="fold") for line in current)))

    try:
        code = follow(status, lambda line: area.print(Text(line, overflow="fold")), busy=busy,
                      redraw=redraw)
    finally:
        area.stop()
    console.print(status_view(proj.status(service), width()))
    return code


@app.command()
def history(service: Annotated[str | None, typer.Argument(
                metavar="[SERVICE]", help="Service (default: the only one).")] = None,
            as_json: JsonOpt = False,
        file: FileOpt = None) -> None:
    """Every rollout of a service: release, outcome and why."""
    use_file(file)
    from kiln_cli.render import history_table

    def body() -> None:
        proj = project()
        name = proj.only_service(service)
        rows = proj.history(name)
        if as_json:
            print_json({"rollouts": rows, "events": proj.events(name)})
        else:
            out().print(history_table(rows, width()))

    guard(body)


def _control(fn: "Callable[[kiln.Project, Callable[[kiln.DeployEvent], None]], Any]",
             as_json: bool) -> None:
    from kiln.project import DeployResult
    from kiln_cli.progress import DeployPrinter

    def body() -> None:
        proj = project()
        printer = DeployPrinter(out(), quiet=as_json)
        try:
            res = fn(proj, printer)
        except KeyboardInterrupt:
            printer.stop()
            raise interrupted(proj) from None
        finally:
            printer.stop()
        if as_json:
            print_json(vars(res))
        else:
            printer.summary(DeployResult([res]))
        if res.outcome in ("rolled_back", "failed"):
            exit_for(DeployResult([res]))

    guard(body)


@app.command()
def promote(service: Annotated[str, typer.Argument(metavar="SERVICE", help="The service.")],
            full: Annotated[bool, typer.Option("--full", help="Skip the remaining steps.")] = False,
            as_json: JsonOpt = False,
        file: FileOpt = None) -> None:
    """Let a paused canary go on to its next step."""
    use_file(file)
    _control(lambda p, ev: p.promote(service, full=full, on_event=ev), as_json)


@app.command()
def abort(service: Annotated[str, typer.Argument(metavar="SERVICE", help="The service.")],
          as_json: JsonOpt = False,
        file: FileOpt = None) -> None:
    """Roll back an in-progress rollout: traffic back to the stable release."""
    use_file(file)
    _control(lambda p, ev: p.abort(service, on_event=ev), as_json)


@app.command()
def rollback(service: Annotated[str, typer.Argument(metavar="SERVICE", help="The service.")],
             to: Annotated[str | None, typer.Option(
                 "--to", metavar="RELEASE",
                 help="Release id, e.g. web-r2: one that went live (default: the previous).")
             ] = None,
             force: Annotated[bool, typer.Option(
                 "--force", help="Accept a release that never went live; it is rolled out like "
                                 "a new one (the spec's strategy and judge).")] = False,
             as_json: JsonOpt = False,
        file: FileOpt = None) -> None:
    """Roll out a retained earlier release as it was made (a new rollout: immutable too)."""
    use_file(file)
    _control(lambda p, ev: p.rollback(service, to, on_event=ev, force=force), as_json)


@app.command()
def destroy(services: Annotated[list[str] | None, typer.Argument(
                metavar="[SERVICE]...", help="Services (default: all).")] = None,
            yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation "
                                              "(it is only asked on a terminal).")] = False,
            as_json: JsonOpt = False,
        file: FileOpt = None) -> None:
    """Stop a service's instances (and the router when nothing is left)."""
    use_file(file)

    def body() -> None:
        proj = project()
        names = list(services or proj.spec.services)
        if not yes and sys.stdin.isatty() and out().is_terminal:
            for name in names:
                proj.service(name)
            if not typer.confirm(f"Stop every instance of {', '.join(names)} in project "
                                 f"{proj.spec.project}? Traffic to them stops", default=False):
                raise fail("destroy: nothing was stopped", 1)
        stopped = proj.destroy(services)
        if as_json:
            print_json({"services": names, "stopped": stopped})
        else:
            out().print(f"stopped {len(stopped)} instance(s)")

    guard(body)


@app.command()
def logs(service: Annotated[str | None, typer.Argument(
             metavar="[SERVICE]", help="Service (default: the only one).")] = None,
         follow: Annotated[bool, typer.Option("--follow", "-f",
                                              help="Keep printing new lines (^C stops).")] = False,
         instance: Annotated[str | None, typer.Option(
             "--instance", metavar="ID", help="One instance, by id or id prefix (any kind, also stopped).")
         ] = None,
         test: Annotated[bool, typer.Option(
             "--test", help="The image test instance (the newest one, also when stopped).")
         ] = False,
         dev: Annotated[bool, typer.Option("--dev", help="Dev instances (`kiln up`).")] = False,
         lines: Annotated[int, typer.Option("--lines", "-n", metavar="N", min=0,
                                            help="Lines of each log to show.")] = 50,
         as_json: JsonOpt = False,
        file: FileLongOpt = None) -> None:
    """Show (or follow) instance logs: the running ones, else the newest (a failed test's)."""
    use_file(file)
    from kiln_cli.render import show_logs

    def body() -> None:
        from kiln.platforms.capabilities import RemoteLogs
        from kiln_cli.render import show_remote_logs

        kind = "test" if test else "dev" if dev else None
        proj = project()
        sources = proj.logs(service, instance, kind)
        reader = proj.compute if isinstance(proj.compute, RemoteLogs) else None
        remote = [s for s in sources if s.remote is not None and reader is not None]
        files = [s for s in sources if s not in remote]
        if as_json:
            from kiln.project import log_tail

            def lines_of(s: Any) -> list[str]:
                if s.remote is not None and reader is not None:
                    return reader.read_log(s.remote, lines=lines)[0]
                return log_tail(s.path, lines)

            print_json([{"instance": s.instance, "kind": s.kind, "state": s.state,
                         "path": None if s in remote else str(s.path),
                         "lines": lines_of(s)} for s in sources])
            return
        if files or not remote:
            show_logs([(s.instance, s.path) for s in files], follow=follow and not remote,
                      lines=lines)
        if remote and reader is not None:
            show_remote_logs(reader, [s.remote for s in remote if s.remote is not None],
                             follow=follow, lines=lines)

    guard(body)


judge_app = typer.Typer(name="judge", help="The canary judge: replay a rollout's verdicts.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(judge_app)


@judge_app.command("replay")
def judge_replay(
    rollout: Annotated[str, typer.Argument(metavar="ROLLOUT", help="The rollout's id "
                                           "(`kiln history` lists them), e.g. 3 or #3.")],
    alpha: Annotated[str | None, typer.Option("--alpha", metavar="A",
                     help="False-alarm budget of the whole rollout (e.g. 0.05).")] = None,
    confidence: Annotated[str | None, typer.Option("--confidence", metavar="C",
                          help="Confidence of the bounds behind pass (e.g. 0.9).")] = None,
    max_error_rate_increase: Annotated[str | None, typer.Option(
        "--max-error-rate-increase", metavar="X", help="Allowed 5xx increase (e.g. 2%).")] = None,
    max_latency_increase: Annotated[str | None, typer.Option(
        "--max-latency-increase", metavar="Y", help="Allowed latency increase (e.g. 50%).")
                                    ] = None,
    max_increase: Annotated[list[str] | None, typer.Option(
        "--max-increase", metavar="NAME=X", help="An analysis.metrics entry's allowed increase "
        "(e.g. checkout_failures=50%); repeatable.")] = None,
    as_json: JsonOpt = False,
    file: FileOpt = None,
) -> None:
    """Judge a rollout's stored evidence again under other settings; per step, the verdict
    next to the recorded one. Writes nothing."""
    use_file(file)
    from kiln_cli.render import replay_view

    def body() -> None:
        import kiln

        text = rollout.strip().removeprefix("#")
        if not text.isdigit():
            raise kiln.NotFound(f"ROLLOUT: expected a rollout id like 3, got {rollout!r}",
                                hint="`kiln history` lists them")
        data = project().judge_replay(int(text), {
            "alpha": alpha, "confidence": confidence,
            "max_error_rate_increase": max_error_rate_increase,
            "max_latency_increase": max_latency_increase, "max_increase": max_increase})
        if as_json:
            print_json(data)
        else:
            out().print(replay_view(data, width()))

    guard(body)


@app.command()
def gc(keep: Annotated[int, typer.Option("--keep", metavar="N", min=0,
                                        help="Live releases to retain per service "
                                        "(the current and previous always are).")] = 3,
       as_json: JsonOpt = False,
        file: FileOpt = None) -> None:
    """Remove images no retained release needs, and dead instance folders."""
    use_file(file)
    from kiln.gc import collect

    def body() -> None:
        res = collect(project(), keep=keep)
        if as_json:
            print_json(res)
        else:
            steps = f"{len(res['steps'])} step image(s), " if res["steps"] else ""
            out().print(f"removed {len(res['images'])} image(s), {steps}"
                        f"{len(res['instances'])} instance folder(s)")

    guard(body)


@app.command()
def up(service: Annotated[str | None, typer.Argument(
           metavar="[SERVICE]", help="Service (default: the only one).")] = None,
       detach: Annotated[bool, typer.Option("--detach", "-d", help="Return at once instead of "
                                            "following the instance's log.")] = False,
       as_json: JsonOpt = False,
        file: FileOpt = None) -> None:
    """Start a dev instance of the exact baked image and follow its logs."""
    use_file(file)
    from kiln.dev import dev_up
    from kiln_cli.render import show_logs

    def body() -> None:
        proj = project()
        inst, log = dev_up(proj, service)
        if as_json:
            print_json({"service": inst.service, "instance": inst.id, "url": inst.url,
                        "log": str(log)})
            return
        out().print(f"[bold]{inst.service}[/] dev instance {inst.id} at {inst.url}")
        if not detach:
            out().print("following logs; ^C stops following (the instance keeps running; "
                        "`kiln down` disposes of it)")
            show_logs([(inst.id, log)], follow=True, lines=20)

    guard(body)


@app.command()
def down(as_json: JsonOpt = False,
        file: FileOpt = None) -> None:
    """Dispose of dev instances."""
    use_file(file)
    from kiln.dev import dev_down

    def body() -> None:
        stopped = dev_down(project())
        if as_json:
            print_json({"stopped": stopped})
        else:
            out().print(f"stopped {len(stopped)} dev instance(s)")

    guard(body)


@app.command("exec", context_settings={"allow_extra_args": True,
                                       "ignore_unknown_options": True})
def exec_cmd(service: Annotated[str, typer.Argument(metavar="SERVICE", help="The service.")],
             command: Annotated[list[str], typer.Argument(metavar="-- COMMAND...",
                                                          help="What to run.")]) -> None:
    """Run a command in an instance's environment: kiln exec web -- python -V"""
    import shlex

    from kiln.dev import dev_exec

    def body() -> None:
        res = dev_exec(project(), service, shlex.join(command))
        sys.stdout.write(res.stdout)
        sys.stderr.write(res.stderr)
        raise typer.Exit(res.exit_code)

    guard(body)


@app.command()
def drift(as_json: JsonOpt = False,
        file: FileOpt = None) -> None:
    """Compare what runs with what the state says should run."""
    use_file(file)
    from kiln.drift import detect

    def body() -> None:
        items = detect(project())
        if as_json:
            print_json(items)
        else:
            for it in items:
                out().print(f"{it['kind']}: {it['detail']}")
            if not items:
                out().print("no drift")
        if items:
            raise typer.Exit(1)

    guard(body)


def _positive_seconds(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise typer.BadParameter(f"expected a number of seconds above 0, got {value:g}")
    return value


@app.command()
def serve(
    listen: Annotated[str, typer.Option(
        "--listen", metavar="HOST:PORT", help="Loopback HOST:PORT of the dashboard "
                                        "(port 0: any free port).")] = "127.0.0.1:8600",
    drift_every: Annotated[float, typer.Option(
        "--drift-every", metavar="SECONDS", callback=_positive_seconds,
        help="Seconds between drift checks.")] = 60.0,
    rotate_token: Annotated[bool, typer.Option(
        "--rotate-token", help="Replace the dashboard's token (it is otherwise kept in "
                               ".kiln/serve.token across restarts).")] = False,
    file: FileOpt = None,
) -> None:
    """Run the project's controller and dashboard until SIGTERM, one line per event;
    everything keeps serving after."""
    use_file(file)
    import signal
    import threading

    import kiln

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def body() -> None:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        kiln.serve(project(), listen, announce=say, stop=stop, drift_every=drift_every,
                   rotate_token=rotate_token)
        say("kiln serve: stopped; instances and the router keep serving")

    guard(body)


def run() -> None:
    """Console-script entry point."""
    # A command's start-up (its imports: pydantic's models, rich, kiln; ~0.2 s, part of every
    # rollout's overhead) allocates much and frees little: no cyclic collection until its
    # project is open (`project()`); a command that opens none is short.
    _gc.disable()
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("kiln: interrupted\n")
        sys.exit(130)
    finally:
        _gc.enable()
