"""``ris info``, ``ris delete``, ``ris drop`` and ``ris lite``: the collection and its store."""

from __future__ import annotations

import json
import os

import click

from ris.common.settings import Settings
from ris.producer.cli.options import pass_settings


@click.command()
@pass_settings
def info(settings: Settings) -> int:
    """collection, model and row count"""
    from ris.producer.client import Producer
    from ris.producer.reports import info_document

    print(json.dumps(info_document(Producer(settings), settings), indent=2))
    return 0


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--prefix", is_flag=True, help="delete every path under each prefix")
@pass_settings
def delete(settings: Settings, paths: tuple[str, ...], prefix: bool) -> int:
    """remove images from the index"""
    from ris.common.store import path_id
    from ris.producer.client import Producer
    from ris.producer.inputs import absolute_prefix, expand_inputs

    store = Producer(settings).store
    if prefix:
        deleted = sum(store.delete_prefix(absolute_prefix(p)) for p in paths)
    else:
        deleted = store.delete_ids(path_id(p) for p in expand_inputs(paths))
    print(f"deleted {deleted} row(s); {store.count()} remain")
    return 0


@click.command()
@click.option("--yes", is_flag=True, help="really drop it")
@pass_settings
def drop(settings: Settings, yes: bool) -> int:
    """drop the collection (all indexed images)"""
    if not yes:
        click.echo("refusing to drop without --yes", err=True)
        return 2
    from ris.common.store import drop_collection

    drop_collection(settings)
    print(f"dropped collection {settings.collection!r}")
    return 0


@click.command()
@click.argument("action", type=click.Choice(["list", "stop"]))
@click.argument("uris", nargs=-1)
@click.option("--all", "every", is_flag=True, help="stop every server listed")
@pass_settings
def lite(settings: Settings, action: str, uris: tuple[str, ...], every: bool) -> int:
    """list or stop the background Milvus Lite servers

    URIS: the .db files to stop (default RIS_MILVUS_URI).
    """
    from ris.common.store.lite_server import list_lite_servers, stop_lite_server

    if action == "list":
        for server in list_lite_servers(settings.lite_registry_dir):
            print(f"{server.db}  {server.address}  pid {server.pid}")
        return 0
    if every:
        dbs = [s.db for s in list_lite_servers(settings.lite_registry_dir)]
    else:
        dbs = list(uris) or [settings.milvus_uri]
    for db in dbs:
        stopped = stop_lite_server(db)
        print(f"{'stopped' if stopped else 'no server running for'} {os.path.abspath(db)}")
    return 0
