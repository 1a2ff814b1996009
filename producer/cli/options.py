"""What several commands share: the settings, the queue and top-k types, common options,
printing a report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ris.common.defaults import MAX_TOP_K
from ris.common.settings import Settings, get_settings

F = TypeVar("F", bound=Callable[..., Any])

# The settings the ``ris`` group read, as a command's first argument.
pass_settings = click.make_pass_decorator(Settings)


def settings_of(ctx: click.Context | None) -> Settings:
    """The settings of the running command (the environment's, outside the ``ris`` group)."""
    found = ctx.find_object(Settings) if ctx is not None else None
    return found if found is not None else get_settings()


class QueueType(click.ParamType):
    """A queue named in RIS_QUEUES: the choices come from the settings, not from the code."""

    name = "queue"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return "[" + "|".join(settings_of(ctx).queues) + "]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        queues = settings_of(ctx).queues
        if value not in queues:
            choices = ", ".join(map(repr, queues))
            self.fail(f"{value!r} is not one of {choices} (RIS_QUEUES)", param, ctx)
        return str(value)


class TopK(click.ParamType):
    """``--top-k``: an integer Milvus accepts as a search limit (one bound with the API's)."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            k = int(value)
        except (TypeError, ValueError):
            self.fail(f"not an integer: {value!r}", param, ctx)
        if not 1 <= k <= MAX_TOP_K:
            self.fail(f"{k} is out of range: 1 to {MAX_TOP_K}", param, ctx)
        return k


QUEUE = QueueType()
TOP_K = TopK()


def _first_queue() -> str:
    return settings_of(click.get_current_context(silent=True)).queues[0]


def queue_option(f: F) -> F:
    """``--queue``: the queue to send the work to (default: the first of RIS_QUEUES)."""
    return click.option(
        "--queue", type=QUEUE, default=_first_queue, help="queue (default: first of RIS_QUEUES)"
    )(f)


def collection_option(help_text: str) -> Callable[[F], F]:
    """``--collection``: another collection than RIS_COLLECTION."""
    return click.option("--collection", help=help_text)


def timeout_option(default: float | None, help_text: str | None = None) -> Callable[[F], F]:
    """``--timeout``: seconds to wait at most."""
    return click.option("--timeout", type=float, default=default, help=help_text)


def print_lines(lines: list[str]) -> None:
    """Print a report's lines (:mod:`ris.producer.reports` builds them)."""
    for line in lines:
        print(line)


quiet_option = click.option("-q", "--quiet", is_flag=True, help="no progress bar")
json_option = click.option("--json", "as_json", is_flag=True, help="print JSON")
