"""The ``ris`` command line: the group, its settings, and the one place errors become exit codes.

Each command lives in a module of its group (``jobs``, ``queries``, ``collection``,
``services``, ``quality``; ``ris worker`` in :mod:`ris.workers.cli`) and is imported only when it
runs, so ``ris --help`` loads click alone: no pydantic, Celery, Milvus client or model stack.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence
from functools import wraps
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, NamedTuple

import click

from ris.common.errors import RisError

if TYPE_CHECKING:
    from ris.common.settings import Settings


class Entry(NamedTuple):
    """Where a command is defined (``module:attribute``) and its line in ``ris --help``."""

    target: str
    summary: str


_P = "ris.producer.cli"
# Every command, by section of ``ris --help``; the summaries are shown without importing the
# commands (tests/unit/test_cli.py checks that each matches its command's own help).
SECTIONS: dict[str, dict[str, Entry]] = {
    "Jobs": {
        "ingest": Entry(
            f"{_P}.jobs:ingest", "index images: folders, globs, list files (.txt/.csv)"
        ),
        "sync": Entry(
            f"{_P}.jobs:sync", "index new and changed files under folders, drop rows gone"
        ),
        "status": Entry(f"{_P}.jobs:status", "progress and failures of an ingest job"),
    },
    "Queries": {
        "search": Entry(
            f"{_P}.queries:search", "find the indexed images most similar to each image"
        ),
        "result": Entry(
            f"{_P}.queries:result", "fetch the results of query tasks submitted earlier"
        ),
        "duplicates": Entry(
            f"{_P}.queries:duplicates", "groups of near-duplicate images in the collection"
        ),
    },
    "Collection": {
        "info": Entry(f"{_P}.collection:info", "collection, model and row count"),
        "delete": Entry(f"{_P}.collection:delete", "remove images from the index"),
        "drop": Entry(f"{_P}.collection:drop", "drop the collection (all indexed images)"),
        "lite": Entry(f"{_P}.collection:lite", "list or stop the background Milvus Lite servers"),
    },
    "Services": {
        "worker": Entry("ris.workers.cli:worker", "run a Celery worker"),
        "serve": Entry(f"{_P}.services:serve", "HTTP API and web page (port 8000; RIS_API_*)"),
        "flower": Entry(
            f"{_P}.services:flower", "watch workers, queues and tasks in Flower (web UI)"
        ),
        "demo": Entry(f"{_P}.services:demo", "index sample photos and answer a query, all local"),
        "metrics": Entry(
            f"{_P}.services:metrics", "serve queue and job gauges for Prometheus (port 9809)"
        ),
    },
    "Quality": {
        "eval": Entry(
            f"{_P}.quality:evaluate",
            "retrieval quality on a labelled dataset (or near duplicates)",
        ),
    },
}
COMMANDS: dict[str, Entry] = {n: e for section in SECTIONS.values() for n, e in section.items()}

# Commands that fail fast, in one line, when Redis does not answer.
NEEDS_REDIS = frozenset({"ingest", "status", "search", "result"})
# Services log at INFO without -v.
_LOUD = frozenset({"worker", "serve"})
# What a command needs beyond the base install, and the extra that brings it.
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "serve": ("api", ("fastapi", "uvicorn")),
    "flower": ("flower", ("flower",)),
    "demo": ("demo", ("towhee", "onnxruntime", "skimage")),
}


def missing_extra(command: str, settings: Settings) -> str | None:
    """One line naming the extra to install, if ``command`` needs modules that are missing."""
    extra, modules = EXTRAS.get(command, ("", ()))
    if command == "worker":
        runtime = "onnxruntime" if settings.runtime == "onnx" else "torch"
        extra = "gpu" if settings.device == "cuda" else "worker"
        modules = ("towhee", runtime)
    missing = [m for m in modules if find_spec(m) is None]
    if not missing:
        return None
    return (
        f"error: `ris {command}` needs the {extra} extra: pip install 'ris[{extra}]' "
        f"(missing: {', '.join(missing)})"
    )


def _problem(loc: tuple[int | str, ...], msg: str) -> str:
    # A check across settings (a model validator) has no field of its own.
    msg = msg.removeprefix("Value error, ")
    return f"RIS_{'_'.join(map(str, loc)).upper()}: {msg}" if loc else msg


def read_settings() -> Settings:
    """The settings from the environment; an invalid one is a RisError naming it."""
    from pydantic import ValidationError

    from ris.common.settings import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(_problem(e["loc"], e["msg"]) for e in exc.errors())
        raise RisError(f"invalid setting: {problems}") from None


def _prepare(ctx: click.Context, command: str) -> None:
    """What runs between parsing a command's arguments and the command itself (a usage
    error is reported first): the extra it needs, logging, and Redis when it needs it."""
    root = ctx.find_root()
    settings: Settings = root.obj
    if message := missing_extra(command, settings):
        print(message, file=sys.stderr)
        raise click.exceptions.Exit(2)
    verbose = bool(root.params.get("verbose")) or command in _LOUD
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if command in NEEDS_REDIS:
        from ris.producer.local_redis import check_redis

        check_redis(settings.redis_url.get_secret_value(), settings.redis_check_timeout_s)


_prepared: set[click.Command] = set()


def _with_preparation(name: str, command: click.Command) -> click.Command:
    """``command`` with :func:`_prepare` run before its callback (once per loaded command)."""
    callback = command.callback
    if callback is None or command in _prepared:
        return command

    @wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        _prepare(click.get_current_context(), name)
        return callback(*args, **kwargs)

    command.callback = run
    _prepared.add(command)
    return command


def _one_line(exc: click.ClickException) -> str:
    """A usage error as one line, naming the command and where its help is."""
    message = exc.format_message().rstrip(".")
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return f"error: {message}"
    return f"error: {ctx.command_path}: {message} (see `{ctx.command_path} --help`)"


class RisGroup(click.Group):
    """The ``ris`` group: commands loaded when they run, errors reported in one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, attribute = entry.target.split(":")
        command = getattr(importlib.import_module(module), attribute)
        return _with_preparation(cmd_name, command)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # From the table, not the commands: listing them imports none.
        for section, entries in SECTIONS.items():
            with formatter.section(section):
                formatter.write_dl([(name, entry.summary) for name, entry in entries.items()])

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; the one handler of the errors the project raises on purpose."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        except (RisError, TimeoutError, ConnectionError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = exc.exit_code if isinstance(exc, RisError) else 1
            raise click.exceptions.Exit(code) from None

    def run(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        **extra: Any,
    ) -> int:
        """Parse ``args`` and run the command; its exit status (a usage error: one line, 2)."""
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            return exc.exit_code
        except click.ClickException as exc:
            print(_one_line(exc), file=sys.stderr)
            return exc.exit_code
        except click.Abort:  # Ctrl-C while click itself was parsing
            return 130
        return rv if isinstance(rv, int) else 0

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        sys.exit(self.run(args, prog_name, complete_var, **extra))


@click.group(cls=RisGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="log more")
@click.pass_context
def ris(ctx: click.Context, verbose: bool) -> None:
    """Distributed reverse image search."""
    ctx.obj = read_settings()  # read once here; commands take them with pass_settings


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ris`` console script: the command's exit status."""
    return ris.run(argv, prog_name="ris")
