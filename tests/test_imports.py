"""The package imports nothing outside the standard library, and exports what it says."""

from __future__ import annotations

import subprocess
import sys

import pytest

from techrevati import runtime

_CHECK = """
import importlib, pkgutil, sys
before = set(sys.modules)
import techrevati.runtime
import techrevati.runtime.__main__ as _m
for info in pkgutil.iter_modules(techrevati.runtime.__path__):
    importlib.import_module("techrevati.runtime." + info.name)
for name in techrevati.runtime.__all__:
    getattr(techrevati.runtime, name)
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
            "import sys, techrevati.runtime.otel, techrevati.runtime.sinks,"
            " techrevati.runtime.redis_store, techrevati.runtime.rate_limit;"
            "print(any(m.startswith(('opentelemetry', 'redis')) for m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == "False"


PRIMITIVES: dict[str, set[str]] = {
    # module -> the other primitives it may load (its own concept's siblings)
    "lifecycle": set(),
    "usage": {"pricing"},
    "pricing": set(),
    "budget": {"usage", "pricing"},
    "retry_policy": set(),
    "circuit_breaker": set(),
    "permissions": set(),
    "policy_engine": {"quality_gate", "conditions"},
    "conditions": {"quality_gate"},
    "quality_gate": set(),
    "rate_limit": set(),
    "approvals": {"permissions"},
    "memory": set(),
    "governance": {"conditions", "quality_gate"},
    "outputs": set(),
    "routing": {"circuit_breaker", "rate_limit"},
    "checkpoints": set(),
    "audit": set(),
    "guardrails": {"hooks"},
    "oversight": {"permissions"},
    "incidents": set(),
    "transparency": set(),
}
NEVER = ("sqlite3", "asyncio", "json", "tomllib")
HEAVY_ALLOWED: dict[str, set[str]] = {
    # Pricing files are JSON or TOML; checkpoints, incidents and the transparency report
    # are JSON; the audit chain is a SQLite file of canonical JSON; a review is awaited.
    "usage": {"json", "tomllib"},
    "pricing": {"json", "tomllib"},
    "budget": {"json", "tomllib"},
    "checkpoints": {"json"},
    "audit": {"sqlite3", "json"},
    "incidents": {"json"},
    "transparency": {"json"},
    "oversight": {"asyncio"},
}
"""Heavy standard modules no primitive needs at import time (usage's pricing files aside)."""

_ISOLATION = """
import sys
import techrevati.runtime.{module}
loaded = sorted(
    name.rsplit(".", 1)[1] for name in sys.modules if name.startswith("techrevati.runtime.")
)
print(" ".join(loaded))
print(" ".join(name for name in {never!r} if name in sys.modules))
"""


@pytest.mark.parametrize("module", sorted(PRIMITIVES))
def test_each_primitive_imports_alone(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _ISOLATION.format(module=module, never=NEVER)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    loaded = set(out[0].split()) if out else set()
    heavy = set(out[1].split()) if len(out) > 1 else set()
    others = {name for name in loaded if not name.startswith("_")} - {module, "errors", "events"}
    assert others <= PRIMITIVES[module], (
        f"{module} also loads {sorted(others - PRIMITIVES[module])}"
    )
    assert not {"orchestrator", "sinks", "_turns", "_session_core"} & loaded
    allowed = HEAVY_ALLOWED.get(module, set())
    assert heavy <= allowed, f"{module} loads {sorted(heavy - allowed)} at import"


def test_the_package_alone_loads_no_submodule_and_no_heavy_stdlib() -> None:
    code = (
        "import sys; import techrevati.runtime;"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('techrevati.'))));"
        "print(' '.join(m for m in ('logging', 'threading', 'asyncio', 'sqlite3', 'json')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["techrevati.runtime", ""]


def test_the_null_handler_is_installed_by_the_first_module_that_logs() -> None:
    code = (
        "import logging; import techrevati.runtime.lifecycle;"
        "print([type(h).__name__ for h in logging.getLogger('techrevati.runtime').handlers])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "['NullHandler']"


def test_the_pydantic_ai_integration_imports_pydantic_ai_lazily() -> None:
    code = (
        "import sys, techrevati.runtime.pydantic_ai;"
        "loaded = {m.split('.')[0] for m in sys.modules};"
        "print(sorted(loaded & {'pydantic', 'pydantic_ai', 'openai'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"
