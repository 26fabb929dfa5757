"""What importing the package costs a whole process, next to tenacity, stamina and pybreaker.

Run: ``.venv/bin/python -m bench.bench_import``

Each variant is a fresh interpreter (``python -c "<import>"``) timed from
start to exit; a bare interpreter (``python -c pass``) is measured in the same
interleaved rounds and subtracted, and the minimum over rounds is kept (the
machine is shared). ``-X importtime`` shows where a variant's time goes.
"""

from __future__ import annotations

import functools
import subprocess
import sys
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


def _process_ms(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    """Print each variant's whole-process cost minus a bare interpreter's."""
    best = interleaved(
        {name: functools.partial(_process_ms, code) for name, code in VARIANTS.items()},
        rounds=ROUNDS,
    )
    bare = best["bare interpreter"]
    print(f"whole process, minus a bare interpreter ({bare:.1f} ms); best of {ROUNDS} rounds:")
    for name, ms in best.items():
        if name != "bare interpreter":
            print(f"{name:<52} {ms - bare:7.1f} ms")


if __name__ == "__main__":
    main()
