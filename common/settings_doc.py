"""The configuration reference (docs/configuration.md), rendered from :class:`Settings`.

Every field's description, default and accepted values come from ``common/settings.py``
itself, grouped by the ``# --- section ---`` comments of the class, so the page cannot drift
from the code: ``tests/unit/test_configuration_docs.py`` fails when the page differs from what this
renders. Regenerate it with::

    python -m ris.common.settings_doc > docs/configuration.md
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from ris.common.defaults import DEVICE_DEFAULTS, INDEX_DEFAULTS
from ris.common.settings import Settings

COMMAND = "python -m ris.common.settings_doc > docs/configuration.md"

# Defaults computed from the machine a process runs on: the page names the rule, not this
# machine's value.
MACHINE_DEPENDENT = {("cuda", "decode_processes"): "three per four cores (at least 1)"}

HEADER = f"""\
# Configuration

<!-- Generated from common/settings.py by `{COMMAND}`.
     Edit the field descriptions there, not this file. -->

Every setting is a field of `Settings` in [common/settings.py](../common/settings.py), read once
per process from an environment variable `RIS_<NAME>`, or from a `.env` file in the working
directory (the environment wins). A process passes its settings to the processes it starts
(`ris demo`'s worker, a benchmark's workers) as `RIS_*` variables. Lists are comma-separated,
except `RIS_ALLOWED_ROOTS` (colon-separated, like `PATH`); parameter objects are JSON;
booleans `true` or `false`. An invalid value stops a command with one line naming the
variable (`error: invalid setting: RIS_TOP_K: ...`).

Defaults run everything on one machine: a Redis on localhost and a Milvus Lite file. The
settings that decide how fast a dead worker's chunks come back, and what each trades, are
explained in [guarantees.md](guarantees.md).
"""


def sections() -> list[tuple[str, list[str]]]:
    """The fields of :class:`Settings` in source order, grouped under the ``# --- name ---``
    comments of the class body."""
    fields = Settings.model_fields
    out: list[tuple[str, list[str]]] = []
    for line in inspect.getsource(Settings).splitlines():
        if m := re.match(r"\s*# --- (.+?) -*$", line):
            out.append((m.group(1), []))
        elif (m := re.match(r" {4}(\w+):", line)) and m.group(1) in fields:
            if not out:
                out.append(("other", []))
            out[-1][1].append(m.group(1))
    return [(title, names) for title, names in out if names]


def _json(value: dict[str, Any]) -> str:
    return f"`{json.dumps(value)}`" if value else "none"


def _index_defaults(which: int) -> str:
    """``which`` 0 (build) or 1 (search) parameters per index type, types alike merged."""
    by_value: dict[str, list[str]] = {}
    for index_type, params in INDEX_DEFAULTS.items():
        by_value.setdefault(_json(params[which]), []).append(index_type)
    parts = [f"{', '.join(types_)}: {text}" for text, types_ in by_value.items()]
    return "follows `RIS_INDEX_TYPE`: " + "; ".join(parts)


def _plain(name: str, value: Any) -> str:
    """A default as it would be written in the variable, with a readable gloss."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        text = str(value)
        home = str(Path.home())
        if text == home or text.startswith(home + "/"):
            text = "~" + text[len(home) :]
        return f"`{text}`"
    if isinstance(value, list):
        if not value:
            return "(empty)"
        return "`" + (":" if name == "allowed_roots" else ",").join(map(str, value)) + "`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, int):
        gloss = ""
        mib = 1024 * 1024
        if name.endswith("_bytes") and value % mib == 0:
            gloss = f" ({value // mib} MiB)"
        elif name.endswith("_s") and value >= 86400 and value % 86400 == 0:
            gloss = f" ({value // 86400} days)"
        elif name.endswith("_s") and value >= 3600 and value % 3600 == 0:
            hours = value // 3600
            gloss = f" ({hours} hour{'s' if hours > 1 else ''})"
        elif value >= 1_000_000 and value % 1_000_000 == 0:
            gloss = f" ({value // 1_000_000} million)"
        return f"`{value}`{gloss}"
    if value == "":
        return "(empty)"
    return f"`{value}`"


def default_text(name: str, field: FieldInfo) -> str:
    """The default of field ``name``, readable: device-dependent and type-dependent defaults
    say what they follow."""
    if name in DEVICE_DEFAULTS["cpu"]:
        parts = []
        for device, defaults in DEVICE_DEFAULTS.items():
            text = MACHINE_DEPENDENT.get((device, name)) or _plain(name, defaults[name])
            parts.append(f"{text} with `RIS_DEVICE={device}`")
        return "; ".join(parts)
    if name == "index_params":
        return _index_defaults(0)
    if name == "search_params":
        return _index_defaults(1)
    value = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
    return _plain(name, value)


def _bounds(field: FieldInfo) -> str:
    """The field's numeric bounds in words: " 1 to 16384", " ≥ 3", " > 0"."""
    found: dict[str, Any] = {}
    for item in field.metadata:
        for attr in ("ge", "gt", "le", "lt"):
            if isinstance(item, getattr(annotated_types, attr.capitalize())):
                found[attr] = getattr(item, attr)
    if "ge" in found and "le" in found:
        return f" {found['ge']} to {found['le']}"
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    return "".join(f" {signs[attr]} {value}" for attr, value in found.items())


def type_text(name: str, field: FieldInfo) -> str:
    """What the variable accepts, in words."""
    annotation = field.annotation
    optional = False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        optional = True
        (annotation,) = [a for a in args if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is Literal:
        text = "one of " + ", ".join(f"`{v}`" for v in typing.get_args(annotation))
    elif origin is list:
        text = "colon-separated paths" if name == "allowed_roots" else "comma-separated list"
    elif origin is dict:
        text = "JSON object"
    elif annotation is SecretStr:
        text = "secret string"
    elif annotation is bool:
        text = "boolean"
    elif annotation is int:
        text = "integer" + _bounds(field)
    elif annotation is float:
        text = "number" + _bounds(field)
    elif annotation is Path:
        text = "path"
    else:
        text = "string"
    return text + (", or unset" if optional else "")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render() -> str:
    """The whole page, as markdown."""
    fields = Settings.model_fields
    out = [HEADER]
    for title, names in sections():
        out.append(f"\n## {title[0].upper()}{title[1:]}\n")
        out.append("| variable | default | accepts | description |")
        out.append("|---|---|---|---|")
        for name in names:
            field = fields[name]
            out.append(
                f"| `RIS_{name.upper()}` | {_cell(default_text(name, field))} "
                f"| {_cell(type_text(name, field))} | {_cell(field.description or '')} |"
            )
    return "\n".join(out) + "\n"


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
