"""The typer application: global options, error handling, and where each group of commands is registered.

Errors never escape as tracebacks: :meth:`_Group.main` turns usage errors into
one line and exit code 2, every other failure (bad files, engine errors) into
one line and exit code 1, and Ctrl-C into one line and exit code 130;
``--debug`` prints the traceback first. The commands live in one module per
group, each adding its commands with ``register(app)``.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

from rechub_serving import RechubError, __version__

from . import _index_cmds, _measure_cmds, _quickstart_cmds
from ._common import EXIT_FAILURE, EXIT_USAGE, CliError, configure_logging, state
from ._options import DebugOpt, JsonOpt, QuietOpt

__all__ = ["EXIT_INTERRUPTED", "app", "run"]

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

# The click exceptions of whatever click typer uses (typer >= 0.20 vendors its own copy).
_click_exc = sys.modules[typer.BadParameter.__module__]


def _fail(message: str, code: int) -> NoReturn:
    if state.debug and sys.exc_info()[0] is not None:
        traceback.print_exc(file=sys.stderr)
    sys.stderr.write(f"rechub-index: error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    return text


def _interrupted_message() -> str:
    written = state.written
    if written is None:
        return "interrupted"
    if not written:
        return "interrupted; nothing was written"
    return f"interrupted; already written: {', '.join(written)}"


def _quiet_flags(params: list[Any]) -> list[Any]:
    """Flags take no value: show no ``<bool>`` type beside them in --help."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    """Every command of the app (typer's, with flags shown without a type)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _quiet_flags(super().get_params(ctx))


class _Interrupted(Exception):
    """Ctrl-C while a command ran, carried past typer (which would turn it into a silent exit 130)."""


class _Group(TyperGroup):
    """A typer group whose errors are one line on stderr with exit code 2 (usage), 1 (failure) or 130 (Ctrl-C)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _quiet_flags(super().get_params(ctx))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted() from exc

    def main(
        self,
        args: Any = None,
        prog_name: Any = None,
        complete_var: Any = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        state.reset()
        configure_logging(state)
        prog_name = prog_name or "rechub-index"
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except (_Interrupted, KeyboardInterrupt):
            _fail(_interrupted_message(), EXIT_INTERRUPTED)
        except _click_exc.NoArgsIsHelpError as exc:
            sys.stderr.write(exc.format_message() + "\n")
            sys.exit(EXIT_USAGE)
        except _click_exc.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else prog_name
            _fail(f"{exc.format_message().rstrip('.')} (see '{where} --help')", EXIT_USAGE)
        except _click_exc.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except typer.Abort:
            _fail("aborted", EXIT_FAILURE)
        except CliError as exc:
            _fail(str(exc), exc.exit_code)
        except (RechubError, OSError, MemoryError) as exc:
            _fail(_one_line(exc), EXIT_FAILURE)
        except Exception as exc:
            _fail(
                f"unexpected {type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)", EXIT_FAILURE
            )
        sys.exit(rv if isinstance(rv, int) else 0)


class _App(typer.Typer):
    """A Typer whose commands are :class:`_Command` unless a module asks for another class."""

    def command(self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(name, cls=cls or _Command, **kwargs)


app = _App(
    cls=_Group,
    name="rechub-index",
    help="Build, query, benchmark and tune vector indexes for recommender retrieval, on any installed backend.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"rechub-index (rechub-serving) {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Build, query, benchmark and tune vector indexes for recommender retrieval, on any installed backend.

    Exit codes: 0 success, 1 failure, 2 bad usage, 130 interrupted.
    """
    state.update(json=json_out, quiet=quiet, debug=debug)


# -- the commands: one module per group, each adds its own with register(app) ---------------------------
_index_cmds.register(app)  # backends, build, query, info
_measure_cmds.register(app)  # bench, tune
_quickstart_cmds.register(app)  # quickstart


def _register_optional(module: str) -> None:
    """Register an optional group (e.g. the trainer's); a broken one must not break the whole CLI."""
    try:
        __import__(f"{__package__}.{module}", fromlist=["register"]).register(app)
    except Exception as exc:
        logging.getLogger("rechub_serving").warning("the %s commands are unavailable: %s", module, exc)


_register_optional("_train_cmds")  # train, recommend
_register_optional("_serve_cmds")  # serve
_register_optional("_milvus_cmds")  # milvus list, drop, convert


def run(argv: list[str] | None = None) -> None:
    """Entry point: run the app on ``argv`` (default: sys.argv[1:]) and exit."""
    typer.main.get_command(app).main(args=argv, prog_name="rechub-index")
