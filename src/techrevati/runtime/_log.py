"""The package's loggers, and the one NullHandler a library should install.

The library installs no handler of its own. A ``NullHandler`` on the package's
root logger keeps Python's last-resort handler from printing records the
application did not ask for (the logging HOWTO's advice for libraries). It is
installed by the first module that logs, so ``import techrevati.runtime``
alone does not import :mod:`logging`.
"""

from __future__ import annotations

import logging

ROOT: str = "techrevati.runtime"

logging.getLogger(ROOT).addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    """Return the logger ``name`` (under ``techrevati.runtime``), NullHandler in place."""
    return logging.getLogger(name)
