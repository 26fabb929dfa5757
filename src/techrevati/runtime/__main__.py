"""Command line: ``python -m techrevati.runtime demo``, ``... report PATH``, ``... audit ...``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]

_USAGE = """usage: python -m techrevati.runtime COMMAND

commands:
  demo                 run a simulated project against a faulty fake provider
  report PATH [...]    summarise a SqliteSink or JsonlSink file (--format, --since, --strict)
  audit verify PATH    check an AuditSink file's hash chain; name the first broken record
  audit archive|anchor move old records out with a signed checkpoint / print the tip
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command named in ``argv`` and return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    command, rest = (args[0], args[1:]) if args else ("", [])
    if command == "demo" and not rest:
        from techrevati.runtime.demo import run_demo

        return run_demo(sys.stdout)
    if command == "report":
        from techrevati.runtime.report import main as report_main

        return report_main(rest)
    if command == "audit":
        from techrevati.runtime.audit import main as audit_main

        return audit_main(rest)
    if command in {"-h", "--help", "help"}:
        print(_USAGE)
        return 0
    print(_USAGE, file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
