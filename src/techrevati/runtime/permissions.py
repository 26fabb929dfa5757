"""Role-based tool permissions: which role may call which tool, denied by default.

Reach for :class:`PermissionEnforcer` before every tool call an agent asks
for. A :class:`PermissionPolicy` gives each role a :class:`PermissionMode`
(``READ_ONLY < WORKSPACE_WRITE < FULL_ACCESS``), an optional allow-list and a
deny-list (exact names or ``fnmatch`` globs such as ``"fs.*"``), and says
which mode each tool requires. The decision is a :class:`PermissionOutcome`
naming the rule that decided it. Precedence is fixed: a deny entry beats an
allow entry, which beats the mode requirement; an unknown role or a malformed
name is denied. Tool and role names are compared after one normalisation
(Unicode NFKC, case folding, invisible format characters dropped, whitespace
trimmed) so that ``"Dangerous_Tool "`` or full-width letters cannot slip past
a deny rule. Decisions are cached per enforcer in a bounded table, so the
common check costs two dictionary look-ups.
"""

from __future__ import annotations

import fnmatch
import re
import threading
import unicodedata
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Final

from techrevati.runtime._validate import enum_member, int_at_least, non_empty_str
from techrevati.runtime.errors import InvalidValueError, PermissionDeniedError

__all__ = [
    "DEFAULT_PERMISSION_CACHE_SIZE",
    "PermissionDeniedError",
    "PermissionEnforcer",
    "PermissionMode",
    "PermissionOutcome",
    "PermissionPolicy",
    "RolePermissionConfig",
    "normalize_permission_name",
]

DEFAULT_PERMISSION_CACHE_SIZE: Final = 4096
"""Decisions a :class:`PermissionEnforcer` caches before starting its cache afresh."""

_MAX_CACHED_NAME_CHARS: Final = 256
"""Longer (role + tool) pairs are decided every time, never cached."""

_MAX_SHOWN_CHARS: Final = 80
"""Names longer than this are shortened in reasons."""

_GLOB_CHARS: Final = frozenset("*?[")


# -- values ---------------------------------------------------------------------


class PermissionMode(IntEnum):
    """How much a role may change: ``READ_ONLY < WORKSPACE_WRITE < FULL_ACCESS``."""

    READ_ONLY = 1
    """May read and compute, change nothing."""
    WORKSPACE_WRITE = 2
    """May change its own workspace (files, drafts, scratch state)."""
    FULL_ACCESS = 3
    """May do anything, including actions with effects outside the workspace."""

    @classmethod
    def parse(cls, value: PermissionMode | str | int) -> PermissionMode:
        """Return the mode for a member, its name (any case, ``-`` or ``_``) or its number.

        Raises :class:`~techrevati.runtime.errors.InvalidValueError` naming the
        value for anything else, so a misspelt mode never grants anything.
        """
        return enum_member(cls, value, "permission mode")


_MODE_NAMES: Final[tuple[str, ...]] = ("", *(mode.name for mode in PermissionMode))
"""Mode names indexed by level (``_MODE_NAMES[PermissionMode.READ_ONLY] == "READ_ONLY"``)."""


@dataclass(frozen=True, slots=True)
class RolePermissionConfig:
    """What one role may do.

    ``mode`` is the role's level (a member, or its name or number).
    ``allowed_tools``: ``None`` means no allow-list (the mode decides);
    a collection makes it an explicit grant list, and tools outside it are
    denied. ``denied_tools`` are always denied. Entries are exact names or
    ``fnmatch`` globs (``"fs.*"``); any collection of strings works and is
    stored as a tuple.
    """

    role: str
    mode: PermissionMode
    allowed_tools: Collection[str] | None = None
    denied_tools: Collection[str] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.role, str) or not normalize_permission_name(self.role):
            raise InvalidValueError(f"role must be a non-empty str, got {self.role!r}")
        object.__setattr__(self, "mode", PermissionMode.parse(self.mode))
        if self.allowed_tools is not None:
            object.__setattr__(
                self, "allowed_tools", _tool_names(self.allowed_tools, "allowed_tools")
            )
        object.__setattr__(self, "denied_tools", _tool_names(self.denied_tools, "denied_tools"))


@dataclass(frozen=True, slots=True)
class PermissionOutcome:
    """The decision for one (role, tool): allowed or not, why, and which rule decided.

    ``rule`` is one of ``"invalid_role"``, ``"invalid_tool"``,
    ``"unknown_role"``, ``"denied_tools:<entry>"``, ``"allowed_tools:<entry>"``,
    ``"not_in_allowed_tools"``, ``"mode:<HAVE>>=<NEEDED>"`` (allowed) or
    ``"mode:<HAVE><<NEEDED>"`` (denied). ``role`` and ``tool`` are the names
    as the caller gave them. The truth value of an outcome is ``allowed``.
    """

    allowed: bool
    reason: str
    rule: str
    role: str = ""
    tool: str = ""

    def __post_init__(self) -> None:
        if type(self.allowed) is not bool:
            raise InvalidValueError(f"allowed must be a bool, got {self.allowed!r}")
        non_empty_str("reason", self.reason)
        non_empty_str("rule", self.rule)

    def __bool__(self) -> bool:
        return self.allowed

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict."""
        return {
            "allowed": self.allowed,
            "reason": self.reason,
            "rule": self.rule,
            "role": self.role,
            "tool": self.tool,
        }


# -- the policy -----------------------------------------------------------------


class PermissionPolicy:
    """An immutable table of role configs and tool requirements, compiled once.

    ``role_configs`` maps each role name to its :class:`RolePermissionConfig`
    (keys must name the config's role; names that collide after
    normalisation are an error). ``tool_requirements`` maps tool names or
    globs to the mode they need (when several match, the strictest wins);
    other tools need ``default_requirement``. :meth:`check` decides without a
    cache; wrap the policy in a :class:`PermissionEnforcer` to cache.

    Safe to share between threads (nothing changes after construction).
    """

    __slots__ = (
        "_default",
        "_exact_requirements",
        "_pattern_requirements",
        "_role_configs",
        "_roles",
        "_tool_requirements",
    )

    def __init__(
        self,
        role_configs: Mapping[str, RolePermissionConfig],
        tool_requirements: Mapping[str, PermissionMode | str | int] | None = None,
        default_requirement: PermissionMode | str | int = PermissionMode.READ_ONLY,
    ) -> None:
        roles: dict[str, _RoleRules] = {}
        for name, key, config in _by_normalised_name(
            role_configs, "role_configs", "role -> RolePermissionConfig", "role"
        ):
            if not isinstance(config, RolePermissionConfig):
                raise InvalidValueError(
                    f"role_configs[{key!r}] must be a RolePermissionConfig, got {config!r}"
                )
            if name != normalize_permission_name(config.role):
                raise InvalidValueError(
                    f"role_configs key {key!r} does not match its config's role {config.role!r}"
                )
            roles[name] = _RoleRules(config)
        self._roles: dict[str, _RoleRules] = roles
        self._role_configs: Mapping[str, RolePermissionConfig] = MappingProxyType(
            dict(role_configs)
        )

        parsed: dict[str, PermissionMode] = {}
        exact: dict[str, PermissionMode] = {}
        globs: dict[PermissionMode, list[str]] = {}
        for name, key, value in _by_normalised_name(
            {} if tool_requirements is None else tool_requirements,
            "tool_requirements",
            "tool -> PermissionMode",
            "tool",
        ):
            mode = _parse_mode(value, f"tool_requirements[{key!r}]")
            parsed[key] = mode
            if _is_glob(name):
                globs.setdefault(mode, []).append(name)
            else:
                exact[name] = mode
        self._tool_requirements: Mapping[str, PermissionMode] = MappingProxyType(parsed)
        self._exact_requirements = exact
        # Strictest first, so the first matching level is the requirement.
        self._pattern_requirements: tuple[tuple[PermissionMode, re.Pattern[str]], ...] = tuple(
            (mode, _compile_globs(globs[mode])) for mode in sorted(globs, reverse=True)
        )
        self._default = _parse_mode(default_requirement, "default_requirement")

    @classmethod
    def from_configs(
        cls,
        configs: Iterable[RolePermissionConfig],
        tool_requirements: Mapping[str, PermissionMode | str | int] | None = None,
        default_requirement: PermissionMode | str | int = PermissionMode.READ_ONLY,
    ) -> PermissionPolicy:
        """Build a policy from configs alone, keyed by their own ``role``."""
        listed = list(configs)
        mapping = {config.role: config for config in listed}
        if len(mapping) != len(listed):
            roles = [config.role for config in listed]
            duplicate = next(role for role in roles if roles.count(role) > 1)
            raise InvalidValueError(f"two configs share the role {duplicate!r}")
        return cls(mapping, tool_requirements, default_requirement)

    @property
    def role_configs(self) -> Mapping[str, RolePermissionConfig]:
        """The role configs as given (read-only)."""
        return self._role_configs

    @property
    def tool_requirements(self) -> Mapping[str, PermissionMode]:
        """The tool requirements as given, modes parsed (read-only)."""
        return self._tool_requirements

    @property
    def default_requirement(self) -> PermissionMode:
        """The mode a tool needs when no requirement names it."""
        return self._default

    def role_config(self, role: str) -> RolePermissionConfig | None:
        """Return the config for ``role`` (compared normalised), or ``None``."""
        if not isinstance(role, str):
            raise InvalidValueError(f"role must be a str, got {role!r}")
        rules = self._roles.get(normalize_permission_name(str.__str__(role)))
        return None if rules is None else rules.config

    def requirement_for(self, tool: str) -> PermissionMode:
        """Return the mode ``tool`` needs: the strictest matching entry, else the default."""
        if not isinstance(tool, str):
            raise InvalidValueError(f"tool must be a str, got {tool!r}")
        return self._requirement(normalize_permission_name(str.__str__(tool)))

    def check(self, role: object, tool: object) -> PermissionOutcome:
        """Decide whether ``role`` may use ``tool``, without a cache. Never raises.

        Order: malformed names, unknown role, ``denied_tools``,
        ``allowed_tools``, then the mode requirement.
        """
        if not isinstance(role, str):
            return _deny(
                "invalid_role",
                f"role must be a str, got {_show(role)}; denied",
                "",
                str.__str__(tool) if isinstance(tool, str) else "",
            )
        if not isinstance(tool, str):
            return _deny("invalid_tool", f"tool must be a str, got {_show(tool)}; denied", role, "")
        # A str subclass could override the methods normalisation calls.
        role = str.__str__(role)
        tool = str.__str__(tool)
        role_name = normalize_permission_name(role)
        tool_name = normalize_permission_name(tool)
        if not role_name:
            return _deny("invalid_role", f"role {_show(role)} is empty; denied", role, tool)
        if not tool_name:
            return _deny(
                "invalid_tool",
                f"tool {_show(tool)} requested by role {_show(role)} is empty; denied",
                role,
                tool,
            )
        rules = self._roles.get(role_name)
        if rules is None:
            return _deny(
                "unknown_role",
                f"role {_show(role)} has no permission config, so tool {_show(tool)} is "
                "denied by default",
                role,
                tool,
            )
        entry = rules.denied.match(tool_name)
        if entry is not None:
            return _deny(
                f"denied_tools:{entry}",
                f"tool {_show(tool)} is denied to role {_show(role)} by its denied_tools "
                f"entry {entry!r}",
                role,
                tool,
            )
        if rules.allowed is not None:
            entry = rules.allowed.match(tool_name)
            if entry is not None:
                return PermissionOutcome(
                    True,
                    f"tool {_show(tool)} is allowed to role {_show(role)} by its allowed_tools "
                    f"entry {entry!r}",
                    f"allowed_tools:{entry}",
                    role,
                    tool,
                )
            return _deny(
                "not_in_allowed_tools",
                f"tool {_show(tool)} is denied to role {_show(role)}: it is not in the "
                "role's allowed_tools",
                role,
                tool,
            )
        have = rules.mode
        need = self._requirement(tool_name)
        # Enum .name is a slow property; the names are looked up by level instead.
        have_name = _MODE_NAMES[have]
        need_name = _MODE_NAMES[need]
        if have >= need:
            return PermissionOutcome(
                True,
                f"tool {_show(tool)} is allowed to role {_show(role)}: it needs {need_name} "
                f"and the role has {have_name}",
                f"mode:{have_name}>={need_name}",
                role,
                tool,
            )
        return _deny(
            f"mode:{have_name}<{need_name}",
            f"tool {_show(tool)} is denied to role {_show(role)}: it needs {need_name} "
            f"and the role has only {have_name}",
            role,
            tool,
        )

    def __repr__(self) -> str:
        return (
            f"PermissionPolicy(roles={sorted(self._roles)!r}, "
            f"tool_requirements={len(self._tool_requirements)}, "
            f"default_requirement={self._default.name})"
        )

    def _requirement(self, tool_name: str) -> PermissionMode:
        exact = self._exact_requirements.get(tool_name)
        for mode, pattern in self._pattern_requirements:
            if exact is not None and exact >= mode:
                break
            if pattern.match(tool_name):
                return mode
        return self._default if exact is None else exact


# -- the enforcer ---------------------------------------------------------------


class PermissionEnforcer:
    """Answers "may this role use this tool?" from a :class:`PermissionPolicy`, cached.

    Decisions for plain ``str`` pairs are cached per enforcer (outcomes are
    immutable). The cache holds at most ``cache_size`` decisions and starts
    afresh when full, so callers passing endless new names cannot grow
    memory; pairs longer than 256 characters are never cached; ``cache_size=0``
    turns caching off.

    Safe to share between threads: a hit takes no lock, a miss takes one only
    to store its result.
    """

    __slots__ = ("_cache", "_cache_size", "_cached", "_lock", "_policy")

    def __init__(
        self, policy: PermissionPolicy, *, cache_size: int = DEFAULT_PERMISSION_CACHE_SIZE
    ) -> None:
        if not isinstance(policy, PermissionPolicy):
            raise InvalidValueError(f"policy must be a PermissionPolicy, got {policy!r}")
        int_at_least("cache_size", cache_size, 0)
        self._policy = policy
        self._cache_size = cache_size
        self._cache: dict[str, dict[str, PermissionOutcome]] = {}
        self._cached = 0
        self._lock = threading.Lock()

    @property
    def policy(self) -> PermissionPolicy:
        """The policy this enforcer applies."""
        return self._policy

    @property
    def cache_size(self) -> int:
        """The most decisions kept in the cache."""
        return self._cache_size

    def check(self, role: str, tool: str) -> PermissionOutcome:
        """Decide whether ``role`` may use ``tool``; never raises.

        Same decision as :meth:`PermissionPolicy.check`, cached for plain ``str`` names.
        """
        if type(role) is str and type(tool) is str:
            by_tool = self._cache.get(role)
            if by_tool is not None:
                outcome = by_tool.get(tool)
                if outcome is not None:
                    return outcome
        return self._decide(role, tool)

    def is_allowed(self, role: str, tool: str) -> bool:
        """Whether ``role`` may use ``tool``."""
        return self.check(role, tool).allowed

    def require(self, role: str, tool: str) -> PermissionOutcome:
        """Return the allowing outcome, or raise :class:`PermissionDeniedError` carrying it."""
        outcome = self.check(role, tool)
        if not outcome.allowed:
            raise PermissionDeniedError(outcome)
        return outcome

    def filter_tools(self, role: str, tools: Iterable[str]) -> list[str]:
        """Return the tools ``role`` may use, in the given order, as the same strings."""
        if isinstance(tools, str):
            raise InvalidValueError(f"tools must be an iterable of names, not the str {tools!r}")
        check = self.check
        return [tool for tool in tools if check(role, tool).allowed]

    def clear_cache(self) -> None:
        """Forget every cached decision."""
        with self._lock:
            self._cache = {}
            self._cached = 0

    def __repr__(self) -> str:
        return f"PermissionEnforcer({self._policy!r}, cache_size={self._cache_size})"

    def _decide(self, role: object, tool: object) -> PermissionOutcome:
        outcome = self._policy.check(role, tool)
        if (
            type(role) is str
            and type(tool) is str
            and self._cache_size
            and len(role) + len(tool) <= _MAX_CACHED_NAME_CHARS
        ):
            with self._lock:
                if self._cached >= self._cache_size:
                    # Readers may still hold the old table; they just miss once.
                    self._cache = {}
                    self._cached = 0
                by_tool = self._cache.get(role)
                if by_tool is None:
                    by_tool = self._cache[role] = {}
                if tool not in by_tool:
                    by_tool[tool] = outcome
                    self._cached += 1
        return outcome


# -- compiled rules (private) ---------------------------------------------------


class _NameSet:
    """Exact names in a frozenset plus globs in one compiled regex."""

    __slots__ = ("_any", "_exact", "_globs")

    def __init__(self, names: Iterable[str]) -> None:
        exact: set[str] = set()
        globs: list[str] = []
        for raw in names:
            name = normalize_permission_name(raw)
            if _is_glob(name):
                if name not in globs:
                    globs.append(name)
            else:
                exact.add(name)
        self._exact = frozenset(exact)
        self._globs = tuple((glob, re.compile(fnmatch.translate(glob))) for glob in globs)
        self._any = _compile_globs(globs) if globs else None

    def match(self, name: str) -> str | None:
        """Return the entry (normalised) that ``name`` matches, or ``None``."""
        if name in self._exact:
            return name
        if self._any is not None and self._any.match(name):
            for glob, pattern in self._globs:
                if pattern.match(name):
                    return glob
        return None


class _RoleRules:
    """One role's config with its names normalised and globs compiled."""

    __slots__ = ("allowed", "config", "denied", "mode")

    def __init__(self, config: RolePermissionConfig) -> None:
        self.config = config
        self.mode = config.mode
        self.denied = _NameSet(config.denied_tools)
        self.allowed = None if config.allowed_tools is None else _NameSet(config.allowed_tools)


# -- functions ------------------------------------------------------------------


def normalize_permission_name(name: str) -> str:
    """Return the form role and tool names are compared in.

    Unicode NFKC (full-width and other compatibility forms become plain
    letters), then case folding (and NFKC again, as folding can undo it),
    then invisible format characters (zero-width spaces, joiners, bidi
    marks) are dropped, then surrounding whitespace is trimmed. ASCII names
    take a fast path with the same result: trimmed and lowercased.
    """
    if name.isascii():
        return name.strip().lower()
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    if any(unicodedata.category(char) == "Cf" for char in text):
        text = "".join(char for char in text if unicodedata.category(char) != "Cf")
    return text.strip()


def _deny(rule: str, reason: str, role: str, tool: str) -> PermissionOutcome:
    return PermissionOutcome(False, reason, rule, role, tool)


def _show(value: object) -> str:
    """Render a caller's name for a reason: repr (control chars escaped), bounded.

    Anything but a str is shown by its type name only, so no caller code runs.
    """
    if not isinstance(value, str):
        return type(value).__name__
    value = str.__str__(value)
    if len(value) > _MAX_SHOWN_CHARS:
        return f"{value[:_MAX_SHOWN_CHARS]!r}... ({len(value)} chars)"
    return repr(value)


def _is_glob(name: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(name)


def _compile_globs(globs: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in globs))


def _parse_mode(value: object, field: str) -> PermissionMode:
    try:
        return PermissionMode.parse(value)  # type: ignore[arg-type]
    except InvalidValueError:
        raise InvalidValueError(
            f"{field} must be a PermissionMode (or its name or number), got {value!r}"
        ) from None


def _tool_names(value: object, field: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidValueError(f"{field} must be a collection of tool names, got {value!r}")
    names = tuple(value)
    for name in names:
        if not isinstance(name, str) or not normalize_permission_name(name):
            raise InvalidValueError(f"{field} entries must be non-empty str, got {name!r}")
    return names


def _by_normalised_name(
    mapping: object, field: str, shape: str, what: str
) -> Iterator[tuple[str, str, object]]:
    """Yield ``(name, key, value)`` per entry, ``name`` normalised once.

    Refuses a non-mapping, a key that is not a non-empty str after
    normalisation, and two keys that normalise to the same name.
    """
    if not isinstance(mapping, Mapping):
        raise InvalidValueError(f"{field} must be a mapping of {shape}, got {mapping!r}")
    first_key: dict[str, str] = {}
    for key, value in mapping.items():
        name = normalize_permission_name(key) if isinstance(key, str) else ""
        if not name:
            raise InvalidValueError(f"{field} keys must be non-empty str, got {key!r}")
        if name in first_key:
            raise InvalidValueError(
                f"{field} keys {first_key[name]!r} and {key!r} name the same {what} "
                f"{name!r} after normalisation"
            )
        first_key[name] = key
        yield name, key, value
