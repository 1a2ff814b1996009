"""Distributed reverse image search.

Installed, the project's folders are sub-packages of this one: ``ris.common`` (shared by both
sides), ``ris.workers`` (Celery workers) and ``ris.producer`` (CLI, client, HTTP API), so
nothing generic lands in site-packages. In a source checkout they stay where the layout puts
them, beside this folder, and this package's path reaches them there.
"""

from pathlib import Path

__version__ = "0.1.0"

_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "common" / "__init__.py").is_file():
    __path__.append(str(_checkout))
