"""The package imports nothing outside the standard library, and exports what it says."""

from __future__ import annotations

import subprocess
import sys

from techrevati import runtime

_CHECK = """
import sys
before = set(sys.modules)
import techrevati.runtime
import techrevati.runtime.__main__ as _m
new = sorted(set(sys.modules) - before)
stdlib = sys.stdlib_module_names
outside = [m for m in new if m.split('.')[0] not in stdlib and not m.startswith('techrevati')]
print(repr(outside))
"""


def test_import_pulls_in_only_the_standard_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CHECK], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


def test_every_exported_name_exists() -> None:
    for name in runtime.__all__:
        assert hasattr(runtime, name), name


def test_all_is_sorted_and_unique() -> None:
    assert len(set(runtime.__all__)) == len(runtime.__all__)


def test_the_package_declares_no_runtime_dependencies() -> None:
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    assert project["dependencies"] == []
    assert project["requires-python"] == ">=3.11"


def test_optional_integrations_import_lazily() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, techrevati.runtime.otel, techrevati.runtime.sinks;"
            "print(any(m.startswith('opentelemetry') for m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == "False"
