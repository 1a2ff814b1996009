"""Install by role: the base wheel (the producer) in a fresh venv, and how fast its commands
start against the full development install.

    python benchmarks/startup.py [--venv DIR] [--repeat 7]

Builds the wheel, installs it with no extra into a new venv (from the package index), checks
that no generic top-level package (``common``, ``workers``, ``producer``) and no model stack
(torch, towhee, onnxruntime) came with it, then times ``ris --help`` and ``ris status JOB``
against a private Redis, best of ``--repeat``, beside the same commands of this venv.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the base install must not bring: generic names, and the worker's model stack.
FORBIDDEN = ("common", "workers", "producer", "torch", "towhee", "onnxruntime", "onnx")


def build_wheel(out: Path) -> Path:
    """The project's wheel, built from this checkout without network (setuptools of this venv)."""
    wheel = ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)]
    # setuptools builds in the checkout's build/ (ignored by git): start from none, so that no
    # file deleted from the tree since an earlier build lands in the wheel.
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    try:
        subprocess.run([sys.executable, "-m", "pip", *wheel], check=True, capture_output=True)
    finally:
        shutil.rmtree(ROOT / "build", ignore_errors=True)
    return next(out.glob("ris-*.whl"))


def install_base(venv: Path, wheel: Path) -> Path:
    """A fresh venv holding ``wheel`` with no extra; returns its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run(
        [*pip, "--disable-pip-version-check", "--no-compile", str(wheel)],
        check=True,
        capture_output=True,
        timeout=900,
    )
    # Byte-compile once, so that the timings below are not the first run's compile.
    subprocess.run([str(venv / "bin" / "python"), "-m", "compileall", "-q", str(venv)], check=False)
    return venv / "bin"


def importable(bin_dir: Path, names: tuple[str, ...] = FORBIDDEN) -> list[str]:
    """Which of ``names`` the venv of ``bin_dir`` can import (run from a neutral folder)."""
    code = (
        "import importlib.util, sys; "
        "print(' '.join(n for n in sys.argv[1:] if importlib.util.find_spec(n)))"
    )
    out = subprocess.run(
        [str(bin_dir / "python"), "-c", code, *names],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    return out.stdout.split()


def best_of(cmd: list[str], env: dict[str, str], repeat: int) -> tuple[float, int]:
    """The fastest wall time of ``cmd`` over ``repeat`` runs, and its exit status."""
    best, rc = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        rc = subprocess.run(
            cmd, env=env, capture_output=True, cwd=tempfile.gettempdir(), check=False
        ).returncode
        best = min(best, time.perf_counter() - start)
    return best, rc


def main() -> int:
    from ris.common.jobs import JobTracker, redis_client
    from ris.common.settings import Settings
    from ris.producer.local_redis import start_redis

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, help="where to make the fresh venv (default: temp)")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ris-startup-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        base = install_base(args.venv or work / "venv", build_wheel(work))
        print(f"base install: {time.perf_counter() - started:.0f} s")
        print(f"importable there of {' '.join(FORBIDDEN)}: {importable(base) or 'none'}")
        url, proc = start_redis(workdir=work)
        try:
            settings = Settings(redis_url=url)
            tracker = JobTracker(redis_client(settings), settings.result_ttl_s)
            tracker.create("startup-bench", "cpu")
            tracker.set_total("startup-bench", 10, 1, finished=True)
            env = {**os.environ, "RIS_REDIS_URL": url}
            env.pop("PYTHONPATH", None)
            print(f"{'command':<22}{'base wheel':>12}{'dev venv':>12}{'ratio':>8}")
            for args_ in (["--help"], ["status", "startup-bench"]):
                base_s, rc = best_of([str(base / "ris"), *args_], env, args.repeat)
                assert rc == 0, f"ris {' '.join(args_)} exited {rc} in the base venv"
                dev_s, _ = best_of(
                    [str(Path(sys.executable).with_name("ris")), *args_], env, args.repeat
                )
                label = "ris " + " ".join(args_)
                print(f"{label:<22}{base_s:>11.3f}s{dev_s:>11.3f}s{base_s / dev_s:>7.2f}x")
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
