"""Benchmark: what the LibOS's measurement and verified start cost on this machine.

    .venv/bin/python -m experiments.bench_libos [--repeat 5] [--dir DIR]

Builds the worker's image with the default libos.toml (entry point
``enclave_worker.main``, its distributions: grpcio, protobuf, numpy, pyarrow,
xgboost-cpu, cryptography and their requirements) and prints:

- ``libos build``: the time of ``libos.image.build`` — copy the packages, hash
  every file of every dependency distribution (and check it against RECORD),
  write and sign the manifest;
- the worker's start with verification as a ratio to an unverified start. The
  unverified start is the plain interpreter importing the same modules::

      python -c "import enclave_worker.main, xgboost, pyarrow, grpc"

  (site-packages bytecode caches used, nothing checked). That start imports
  more than the enclave does: xgboost imports scikit-learn and scipy when they
  are importable, which they are in the venv but not in the image (not
  measured). So a second baseline imports the same module set: the plain
  interpreter with a finder that refuses the same unmeasured top-level names,
  and checks nothing. The verified start is
  what ``detente libos run`` does up to the entry point (``libos.enclave_start``
  started with ``--startup-probe enclave_worker.main xgboost pyarrow grpc``):
  check the manifest's signature and signer, hash the image's files and every
  dependency file that is not a module, then import the same modules with each
  module file hashed against the manifest. Measured twice: with a cold
  bytecode cache (the first start after a build compiles every module from its
  verified source) and a warm one (code objects from the HMAC-authenticated
  cache). Both are wall times of a fresh process, as the host sees them.

Figures are the median of ``--repeat`` runs (best in brackets).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from libos import enclave_start, image, launcher

MODULES = ("enclave_worker.main", "xgboost", "pyarrow", "grpc")


def _times(run: Callable[[], float], repeat: int) -> list[float]:
    return [run() for _ in range(repeat)]


def _fmt(times: list[float]) -> str:
    return f"{statistics.median(times):6.2f} s  (best {min(times):.2f} s)"


_SAME_MODULES = """
import importlib.abc, json, sys
allowed = set(json.loads(sys.argv[1])) | set(sys.stdlib_module_names)


class Unmeasured(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in allowed or top.startswith("_sysconfigdata"):
            return None
        raise ModuleNotFoundError(name, name=name)


sys.meta_path.insert(0, Unmeasured())
import %s
"""


def _plain_start(allowed: list[str] | None = None) -> float:
    if allowed is None:
        cmd = [sys.executable, "-c", "import " + ", ".join(MODULES)]
    else:
        cmd = [sys.executable, "-c", _SAME_MODULES % ", ".join(MODULES), json.dumps(allowed)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="work here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-libos-"))
    instance = work / "instance"
    try:
        shutil.rmtree(instance, ignore_errors=True)
        image.init(instance)
        builds: list[float] = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            measurement = image.build(instance)
            builds.append(time.perf_counter() - started)
        cache = instance / enclave_start.CACHE_DIR / enclave_start.BYTECODE_DIR

        def verified(cold: bool) -> Callable[[], float]:
            def run() -> float:
                if cold:
                    shutil.rmtree(cache, ignore_errors=True)
                return launcher.startup_probe(instance, MODULES[1:]).wall_seconds

            return run

        verified_image = image.verify_image(instance, dependencies="versions")
        allowed = sorted(
            image.top_level_modules(verified_image.distributions)
            | set(verified_image.config.packages)
        )
        _plain_start()  # page cache warm for every variant alike
        plain = _times(_plain_start, args.repeat)
        same = _times(lambda: _plain_start(allowed), args.repeat)
        cold = _times(verified(cold=True), args.repeat)
        warm = _times(verified(cold=False), args.repeat)
        report = launcher.startup_probe(instance, MODULES[1:])
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"libos bench on {sys.platform}, Python {sys.version.split()[0]}, {args.repeat} runs each"
    )
    print(
        f"image: {measurement.file_count} image files, {measurement.dependency_file_count} files "
        f"of {measurement.dependency_count} distributions "
        f"({measurement.dependency_bytes / (1 << 20):,.0f} MiB), MRENCLAVE "
        f"{measurement.mrenclave[:16]}…"
    )
    print(f"libos build                          {_fmt(builds)}")
    print(f"unverified start (plain imports)     {_fmt(plain)}")
    print(f"unverified start, same module set    {_fmt(same)}")
    print(f"verified start, cold bytecode cache  {_fmt(cold)}")
    print(f"verified start, warm bytecode cache  {_fmt(warm)}")
    for label, baseline in (("plain imports", plain), ("same module set", same)):
        base = statistics.median(baseline)
        print(
            f"ratio verified/unverified ({label}): cold {statistics.median(cold) / base:.2f}, "
            f"warm {statistics.median(warm) / base:.2f}"
        )
    print(
        f"warm start breakdown: verification and runtime {report.enter_seconds:.2f} s, "
        f"verified imports {report.import_seconds:.2f} s, {report.modules} modules, "
        f"idle peak {report.peak_rss_bytes / (1 << 20):,.0f} MiB resident"
    )


if __name__ == "__main__":
    main()
