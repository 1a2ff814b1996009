"""Distributed reverse image search.

The project's folders are sub-packages of this one: ``ris.common`` (shared by both sides),
``ris.workers`` (Celery workers) and ``ris.producer`` (CLI, client, HTTP API). In a source
checkout they stay where the layout puts them, beside this folder, and ``ris/common``,
``ris/workers`` and ``ris/producer`` are links to them, so that Python, mypy and editors
resolve ``ris.common`` the same way; an installed wheel holds them under ``ris/``.
"""

__version__ = "0.1.0"
