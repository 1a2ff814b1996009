"""Simulated hosts on one machine: Linux network namespaces on a private bridge.

Each host is a namespace ``{prefix}-{name}`` with one interface, ``eth0``, on a bridge that
lives in a namespace of its own (``{prefix}-sw``). Addresses are private (``10.x.y.0/24``) and
exist only inside these namespaces; there is no default route, so nothing a test starts can
reach, or be reached from, anything else. Faults are nftables rules inside one host's
namespace: a partition drops every packet but loopback, an impairment delays and drops
packets through an NFQUEUE served by ``tests/nfqdelay.py``.

Every process started here is a process of its namespace; :meth:`Hosts.close` kills them all
by pid (``ip netns pids``) and deletes the namespaces, also after a failed test.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
_CLONE_NEWNET = 0x40000000
_NFQUEUE = 7  # the NFQUEUE number inside a host's namespace (each namespace has its own)


class NamespacesUnavailable(RuntimeError):
    """Network namespaces cannot be created here (no root, no CAP_NET_ADMIN, no tools)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def _nft(ns: str, ruleset: str) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=ruleset,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        raise RuntimeError(f"nft in {ns}: {done.stderr.strip()}\n{ruleset}")


# The NFQUEUE rule of an impaired host: iptables' NFQUEUE target (xt_NFQUEUE), which works
# where nftables' own queue expression (nft_queue) is not built; bypass: packets pass
# undelayed if no reader is bound, never a silent cut.
_QUEUE_RULE = ["OUTPUT", "-o", "eth0", "-j", "NFQUEUE", "--queue-bypass", "--queue-num"]


def _iptables(ns: str, *args: str) -> None:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "iptables", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(args)} in {ns}: {done.stderr.strip()}")


def probe() -> str | None:
    """Why namespaces with nftables cannot be used here, or None when they can."""
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install iproute2 nftables)"
    name = f"risprobe-{uuid.uuid4().hex[:8]}"
    try:
        made = _ip("netns", "add", name, check=False)
        if made.returncode != 0:
            return f"cannot create a network namespace: {made.stderr.strip()}"
        try:
            _nft(name, "table inet probe { }\n")
        except RuntimeError as exc:
            return f"nftables does not work in a namespace: {exc}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


def nfqueue_unavailable() -> str | None:
    """Why packets cannot be delayed here (tests/nfqdelay.py), or None when they can."""
    if shutil.which("iptables") is None:
        return "delay needs iptables' NFQUEUE target (apt-get install iptables)"
    try:
        import netfilterqueue  # noqa: F401
    except ImportError as exc:
        return (
            f"delay needs PyPI netfilterqueue and Debian libnetfilter-queue1 ({exc}); "
            "the kernel has no sch_netem"
        )
    return None


class Hosts:
    """A set of simulated hosts on one private segment."""

    def __init__(self, subnet: str = "10.78.0") -> None:
        reason = probe()
        if reason:
            raise NamespacesUnavailable(reason)
        self.prefix = f"ris{uuid.uuid4().hex[:6]}"
        self.subnet = subnet
        self.addresses: dict[str, str] = {}
        self._names: list[str] = []  # namespaces made, in order
        self._impairers: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._names.append(self.switch)  # the bridge's namespace first: deleted last
        try:
            _ip("netns", "add", self.switch)
            _ip("-n", self.switch, "link", "set", "lo", "up")
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    # --- topology --------------------------------------------------------------------------
    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def ns(self, host: str) -> str:
        """The namespace of ``host``."""
        return f"{self.prefix}-{host}"

    def add(self, host: str) -> str:
        """Create ``host`` on the bridge and return its address."""
        n = len(self.addresses) + 1
        ns, port, address = self.ns(host), f"p{n}", f"{self.subnet}.{n}"
        self._names.append(ns)
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
            "netns", ns)  # fmt: skip
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        self.addresses[host] = address
        return address

    # --- processes -------------------------------------------------------------------------
    def spawn(
        self,
        host: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        log: Path | None = None,
        stdout: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on ``host`` (its own process group); output appended to ``log``."""
        out: int | IO[bytes] | None = stdout if stdout is not None else subprocess.DEVNULL
        if log is not None:
            out = open(log, "ab")  # noqa: SIM115 (closed in close())
            self._logs.append(out)
        return subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), *argv],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def run(self, host: str, argv: Sequence[str], env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run ``argv`` on ``host`` to completion; its output is returned."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(host), *argv],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def pids(self, host: str) -> list[int]:
        """Every process running in ``host``'s namespace."""
        out = _ip("netns", "pids", self.ns(host), check=False).stdout
        return [int(p) for p in out.split()]

    def kill_all(self, host: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """Send ``sig`` to every process of ``host``; how many there were."""
        pids = self.pids(host)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return len(pids)

    @contextlib.contextmanager
    def inside(self, host: str) -> Iterator[None]:
        """Run this thread's network calls from ``host``: sockets opened inside the block
        belong to that host (and keep working after it)."""
        fd = os.open(f"/run/netns/{self.ns(host)}", os.O_RDONLY)
        try:
            self._setns(fd)
            try:
                yield
            finally:
                self._setns(self._home)
        finally:
            os.close(fd)

    def _setns(self, fd: int) -> None:
        if self._libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")

    # --- faults ----------------------------------------------------------------------------
    def partition(self, host: str, port: int | None = None) -> None:
        """Drop every packet of ``host`` except loopback (or only TCP ``port``'s)."""
        match = f"tcp dport {port} drop\n    tcp sport {port} drop" if port else "drop"
        _nft(
            self.ns(host),
            "table inet ris_part {\n"
            "  chain i { type filter hook input priority 0; policy accept;\n"
            f'    iifname "lo" accept\n    {match}\n  }}\n'
            "  chain o { type filter hook output priority 0; policy accept;\n"
            f'    oifname "lo" accept\n    {match}\n  }}\n'
            "}\n",
        )

    def heal(self, host: str) -> None:
        """Undo :meth:`partition`."""
        _nft(self.ns(host), "delete table inet ris_part\n")

    def impair(self, host: str, delay_ms: int, loss_pct: float) -> None:
        """Delay every packet ``host`` sends by ``delay_ms`` and drop ``loss_pct`` % of them."""
        proc = self.spawn(
            host,
            [sys.executable, str(ROOT / "tests" / "nfqdelay.py"), str(_NFQUEUE),
             str(delay_ms), str(loss_pct)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        if b"ready" not in proc.stdout.readline():
            proc.kill()
            raise RuntimeError(f"nfqdelay did not start (exit {proc.wait(10)})")
        self._impairers[host] = proc
        _iptables(self.ns(host), "-A", *_QUEUE_RULE, str(_NFQUEUE))

    def unimpair(self, host: str) -> None:
        """Undo :meth:`impair`."""
        _iptables(self.ns(host), "-D", *_QUEUE_RULE, str(_NFQUEUE))
        proc = self._impairers.pop(host)
        proc.terminate()
        proc.wait(10)

    # --- teardown --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every process of every host (SIGTERM, then SIGKILL) and delete the namespaces."""
        hosts = list(self.addresses)
        for host in hosts:
            self.kill_all(host, signal.SIGTERM)
        self._wait_empty(hosts, 10)
        for host in hosts:
            self.kill_all(host, signal.SIGKILL)
        self._wait_empty(hosts, 10)
        for proc in self._impairers.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for name in reversed(self._names):
            _ip("netns", "del", name, check=False)
        for fh in self._logs:
            fh.close()
        os.close(self._home)

    def _wait_empty(self, hosts: list[str], timeout_s: float) -> None:
        """Wait up to ``timeout_s`` until no process runs on ``hosts`` (no error after it)."""
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not any(self.pids(h) for h in hosts), timeout_s, every_s=0.2)
