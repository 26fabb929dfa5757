"""What importing the package costs a whole process, next to tenacity, stamina and pybreaker.

Run: ``.venv/bin/python -m bench.bench_import``

Each variant is a fresh interpreter (``python -c "<import>"``) timed from
start to exit, with a warm bytecode cache (as an installed package has); a
bare interpreter (``python -c pass``) is measured in the same interleaved
rounds and subtracted, and the minimum over rounds is kept (the
machine is shared). ``-X importtime`` shows where a variant's time goes.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import time

from bench._timing import interleaved

ROUNDS = 15

VARIANTS: dict[str, str] = {
    "bare interpreter": "pass",
    "import techrevati.runtime": "import techrevati.runtime",
    "import techrevati.runtime.circuit_breaker": "import techrevati.runtime.circuit_breaker",
    "import techrevati.runtime.retry_policy": "import techrevati.runtime.retry_policy",
    "import techrevati.runtime.usage": "import techrevati.runtime.usage",
    "quick start (Orchestrator, CircuitBreaker, ...)": (
        "from techrevati.runtime import CircuitBreaker, ModelPricing, Orchestrator, "
        "UsageSnapshot, register_pricing"
    ),
    "import tenacity": "import tenacity",
    "import stamina": "import stamina",
    "import pybreaker": "import pybreaker",
}


def _process_ms(code: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    return (time.perf_counter() - start) * 1000


def _cached_bytecode_env(cache_dir: str) -> dict[str, str]:
    """An environment where imports use a warm ``.pyc`` cache, as an installed package does.

    ``PYTHONDONTWRITEBYTECODE`` (set on some machines) would make every start
    compile every source; the cache goes to a private folder instead.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache_dir
    return env


def main() -> None:
    """Print each variant's whole-process cost minus a bare interpreter's."""
    with tempfile.TemporaryDirectory() as cache_dir:
        env = _cached_bytecode_env(cache_dir)
        for code in VARIANTS.values():
            _process_ms(code, env)  # fill the bytecode cache
        best = interleaved(
            {name: functools.partial(_process_ms, code, env) for name, code in VARIANTS.items()},
            rounds=ROUNDS,
        )
    bare = best["bare interpreter"]
    print(f"whole process, minus a bare interpreter ({bare:.1f} ms); best of {ROUNDS} rounds:")
    for name, ms in best.items():
        if name != "bare interpreter":
            print(f"{name:<52} {ms - bare:7.1f} ms")


if __name__ == "__main__":
    main()
