"""Command line: ``python -m techrevati.runtime demo``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command named in ``argv`` and return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] != ["demo"]:
        print("usage: python -m techrevati.runtime demo", file=sys.stderr)
        return 2
    print("demo: coming with the orchestrator")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
