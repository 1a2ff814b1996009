"""Find a Redis to use on this machine, or start a private one (for the demo and the tests)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from ris.common.errors import RedisUnavailable


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    """True when a Redis server answers PING at ``url``."""
    try:
        return bool(
            redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            ).ping()
        )
    except (redis.RedisError, OSError):
        return False


def public_url(url: str) -> str:
    """``url`` without its password, to show in messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{user}{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_redis(url: str, timeout_s: float) -> None:
    """Raise RedisUnavailable with a one-line reason unless Redis at ``url`` answers a PING
    within ``timeout_s`` (a command fails fast instead of retrying for a minute)."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise RedisUnavailable(
            f"Redis at {public_url(url)} refused the credentials: {exc}"
        ) from None
    except (redis.RedisError, OSError) as exc:
        raise RedisUnavailable(
            f"Redis at {public_url(url)} is unreachable ({exc}); is it running? (RIS_REDIS_URL)"
        ) from None
    finally:
        client.close()


def start_redis(
    port: int | None = None, workdir: Path | None = None, persistent: bool = False
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start ``redis-server`` on a (spare) loopback port; returns its URL and process.

    ``persistent`` keeps an append-only file in ``workdir``, so a restart loses no message.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "no Redis answers and redis-server is not installed "
            "(apt-get install redis-server, or set RIS_REDIS_URL)"
        )
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
    workdir = workdir or Path(tempfile.mkdtemp(prefix="ris-redis-"))
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if persistent else "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if redis_answers(url, 0.2):
            return url, proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not start on port {port}")
