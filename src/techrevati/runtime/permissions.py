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

import os
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Final, Literal, NamedTuple

from techrevati.runtime._permission_args import ArgRule, Workspace, argument_kind, read_rule
from techrevati.runtime._permission_names import (
    NAME_GRAMMAR,
    Glob,
    NameIndex,
    grammar_violation,
    is_glob,
    normalize_permission_name,
)
from techrevati.runtime._validate import enum_member, int_at_least, non_empty_str
from techrevati.runtime.errors import InvalidValueError, PermissionDeniedError

__all__ = [
    "DEFAULT_PERMISSION_CACHE_SIZE",
    "ApprovalAnswer",
    "ApprovalDenial",
    "ApprovalRequest",
    "Approver",
    "NAME_GRAMMAR",
    "PermissionDecision",
    "PermissionDeniedError",
    "PermissionExplanation",
    "PermissionEnforcer",
    "PermissionMode",
    "PermissionOutcome",
    "PermissionPolicy",
    "RolePermissionConfig",
    "RuleCheck",
    "normalize_permission_name",
]

DEFAULT_PERMISSION_CACHE_SIZE: Final = 4096
"""Decisions a :class:`PermissionEnforcer` caches before starting its cache afresh."""

_MAX_CACHED_NAME_CHARS: Final = 256
"""Longer (role + tool) pairs are decided every time, never cached."""

_MAX_SHOWN_CHARS: Final = 80
"""Names longer than this are shortened in reasons."""

Effect = Literal["allow", "deny", "ask"]
"""What a decision says: run the call, refuse it, or ask someone first."""


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
    denied. ``denied_tools`` are always denied. ``ask_tools`` need someone's
    approval first (see :meth:`PermissionPolicy.decide`). Entries are exact
    names or globs (``"fs.*"``: ``*`` stays within one ``.``/``:`` segment,
    ``**`` crosses them), optionally with a pattern over the call's
    arguments: ``"shell(npm run *)"``, ``"fs.write(path:src/**)"``. Any
    collection of strings works and is stored as a tuple; a malformed entry
    is refused here, naming it.
    """

    role: str
    mode: PermissionMode
    allowed_tools: Collection[str] | None = None
    denied_tools: Collection[str] = ()
    ask_tools: Collection[str] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.role, str) or not normalize_permission_name(self.role):
            raise InvalidValueError(f"role must be a non-empty str, got {self.role!r}")
        problem = grammar_violation(normalize_permission_name(str.__str__(self.role)))
        if problem is not None:
            raise InvalidValueError(f"role {_show(self.role)} is not a valid name: {problem}")
        object.__setattr__(self, "mode", PermissionMode.parse(self.mode))
        if self.allowed_tools is not None:
            object.__setattr__(
                self, "allowed_tools", _tool_names(self.allowed_tools, "allowed_tools")
            )
        object.__setattr__(self, "denied_tools", _tool_names(self.denied_tools, "denied_tools"))
        object.__setattr__(self, "ask_tools", _tool_names(self.ask_tools, "ask_tools"))


@dataclass(frozen=True, slots=True)
class RuleCheck:
    """One rule :meth:`PermissionPolicy.explain` considered: did it match, and why (not)."""

    layer: str
    """``"names"``, ``"role"``, ``"denied_tools"``, ``"ask_tools"``, ``"workspace"``,
    ``"allowed_tools"`` or ``"mode"``."""
    entry: str
    """The entry (normalised) or the check, e.g. ``"shell(npm run *)"``."""
    result: Literal["match", "no_match", "unreadable", "decided"]
    """``"unreadable"``: the call's arguments could not be read for the rule."""
    detail: str
    """Why, e.g. ``"pattern 'npm run *' did not match command 'npm test'"``."""


class PermissionDecision(NamedTuple):
    """The full decision for one call: allow, deny or ask, who decided and why.

    ``layer`` and ``rule`` name what decided (``rule`` as in
    :class:`PermissionOutcome`, plus ``"ask_tools:<entry>"`` and
    ``"workspace:<argument>"``); ``required`` and ``held`` are the modes the
    tool needs and the role has (None where no role or requirement was
    reached). The truth value is ``effect == "allow"``. Immutable (a named
    tuple: the cheapest immutable record, made on every decision).
    """

    effect: Effect
    reason: str
    rule: str
    layer: str
    role: str = ""
    tool: str = ""
    required: PermissionMode | None = None
    held: PermissionMode | None = None

    @property
    def allowed(self) -> bool:
        """Whether the call may run without asking anyone."""
        return self.effect == "allow"

    def __bool__(self) -> bool:
        return self.effect == "allow"

    @property
    def outcome(self) -> PermissionOutcome:
        """The decision as :meth:`PermissionPolicy.check` reports it (``ask`` is not allowed)."""
        # Built from checked fields: the outcome's own validation would only repeat it.
        outcome = object.__new__(PermissionOutcome)
        for name, value in (
            ("allowed", self.effect == "allow"),
            ("reason", self.reason),
            ("rule", self.rule),
            ("role", self.role),
            ("tool", self.tool),
        ):
            object.__setattr__(outcome, name, value)
        return outcome

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict."""
        return {
            "effect": self.effect,
            "reason": self.reason,
            "rule": self.rule,
            "layer": self.layer,
            "role": self.role,
            "tool": self.tool,
            "required": None if self.required is None else self.required.name,
            "held": None if self.held is None else self.held.name,
        }


@dataclass(frozen=True, slots=True)
class PermissionExplanation:
    """Every rule considered for one call, in order, and the decision they led to."""

    decision: PermissionDecision
    checks: tuple[RuleCheck, ...]

    def __str__(self) -> str:
        lines = [f"{self.decision.effect}: {self.decision.reason}"]
        lines += [
            f"  [{check.layer}] {check.entry}: {check.result} ({check.detail})"
            for check in self.checks
        ]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class PermissionOutcome:
    """The decision for one (role, tool): allowed or not, why, and which rule decided.

    ``rule`` is one of ``"invalid_role"``, ``"invalid_tool"``,
    ``"unknown_role"``, ``"denied_tools:<entry>"``, ``"ask_tools:<entry>"``
    (not allowed without an approval), ``"workspace:<argument>"``,
    ``"allowed_tools:<entry>"``, ``"not_in_allowed_tools"``,
    ``"mode:<HAVE>>=<NEEDED>"`` (allowed) or ``"mode:<HAVE><<NEEDED>"``
    (denied). ``role`` and ``tool`` are the names as the caller gave them.
    The truth value of an outcome is ``allowed``.
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


# -- asking -------------------------------------------------------------------


class ApprovalAnswer(StrEnum):
    """An approver's answer to an ``ask`` (or it returns an approval token instead)."""

    ALLOW_ONCE = "allow_once"
    """Run this call; ask again next time."""
    ALLOW_SESSION = "allow_session"
    """Run this call and every later call of this tool by this rule, in this session."""
    DENY = "deny"
    """Do not run it."""


class ApprovalDenial(NamedTuple):
    """An approver's deny that says why: the reason goes into the decision and the error.

    ``ApprovalDenial("review timed out after 300s")``; a bare
    :attr:`ApprovalAnswer.DENY` denies without one.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """What an approver is asked about: the ``ask`` decision and the call."""

    decision: PermissionDecision
    tool: str
    role: str
    arguments: Mapping[str, object]
    session_id: str


Approver = Callable[["ApprovalRequest"], object]
"""Answers an :class:`ApprovalRequest` with an :class:`ApprovalAnswer` (or its value), an
:class:`ApprovalDenial` (deny, saying why), an approval token (allow with that token), or
an awaitable of one (for ``arun_tool``)."""


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
        "_workspace",
    )

    def __init__(
        self,
        role_configs: Mapping[str, RolePermissionConfig],
        tool_requirements: Mapping[str, PermissionMode | str | int] | None = None,
        default_requirement: PermissionMode | str | int = PermissionMode.READ_ONLY,
        *,
        workspace: str | os.PathLike[str] | None = None,
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
            _check_entry_name(name, f"tool_requirements key {key!r}")
            parsed[key] = mode
            if is_glob(name):
                globs.setdefault(mode, []).append(name)
            else:
                exact[name] = mode
        self._tool_requirements: Mapping[str, PermissionMode] = MappingProxyType(parsed)
        self._exact_requirements = exact
        # Strictest first, so the first matching level is the requirement.
        self._pattern_requirements: tuple[tuple[PermissionMode, NameIndex], ...] = tuple(
            (mode, NameIndex(globs[mode])) for mode in sorted(globs, reverse=True)
        )
        self._default = _parse_mode(default_requirement, "default_requirement")
        if workspace is not None and not isinstance(workspace, (str, os.PathLike)):
            raise InvalidValueError(f"workspace must be a path or None, got {workspace!r}")
        self._workspace = Workspace(workspace)

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

    def uses_arguments(self, role: str) -> bool:
        """Whether a decision for ``role`` can depend on the call's arguments.

        True when the role has a rule on arguments or the policy names a
        workspace; a caller may skip gathering the arguments otherwise.
        """
        if self._workspace.root is not None:
            return True
        rules = self._roles.get(normalize_permission_name(str.__str__(role)))
        return rules is not None and rules.has_arg_rules

    def matches_arguments(self, pattern: str, args: Mapping[str, object]) -> bool:
        """Whether ``args`` match ``pattern`` as a rule's would (``"path:src/**"``, ``"npm *"``).

        Paths are resolved against this policy's workspace. A malformed
        pattern or unreadable arguments do not match. Used to check approval
        tokens scoped to an argument pattern.
        """
        try:
            rule = read_rule("token", f"({pattern})")
        except ValueError:
            return False
        return rule.test(args, self._workspace)[0] == "match"

    @property
    def workspace(self) -> str | None:
        """The directory path arguments are resolved against (None: none named)."""
        return self._workspace.root

    def decide(self, role: object, tool: object, args: object = None) -> PermissionDecision:
        """Decide a call of ``tool`` by ``role`` with ``args``: allow, deny or ask. Never raises.

        ``args`` is the call's arguments by name (a mapping), or the whole
        call as a str, or None (not known: rules that need them deny).
        Order (deny overrides): malformed names, unknown role,
        ``denied_tools``, ``ask_tools``, path arguments outside the
        workspace, ``allowed_tools``, then the mode requirement.
        """
        return self._evaluate(role, tool, args, None)

    def explain(self, role: object, tool: object, args: object = None) -> PermissionExplanation:
        """Return the decision with every rule considered, in order, and why each (not) matched."""
        checks: list[RuleCheck] = []
        decision = self._evaluate(role, tool, args, checks)
        return PermissionExplanation(decision, tuple(checks))

    def check(self, role: object, tool: object) -> PermissionOutcome:
        """Decide whether ``role`` may use ``tool``, without a cache. Never raises.

        :meth:`decide` without arguments, as an outcome: an ``ask`` is not
        allowed, and a rule that needs the call's arguments to decide denies.
        """
        return self._evaluate(role, tool, None, None).outcome

    def _evaluate(
        self, role: object, tool: object, args: object, trace: list[RuleCheck] | None
    ) -> PermissionDecision:
        """Decide one call: the one engine behind :meth:`decide`, :meth:`explain`, :meth:`check`."""
        if not isinstance(role, str):
            return _verdict(
                trace,
                "deny",
                "names",
                "invalid_role",
                f"role must be a str, got {_show(role)}; denied",
                "",
                str.__str__(tool) if isinstance(tool, str) else "",
            )
        if not isinstance(tool, str):
            return _verdict(
                trace,
                "deny",
                "names",
                "invalid_tool",
                f"tool must be a str, got {_show(tool)}; denied",
                role,
                "",
            )
        # A str subclass could override the methods normalisation calls.
        role = str.__str__(role)
        tool = str.__str__(tool)
        role_name = _form(role)[0]
        tool_name, tool_problem = _form(tool)
        if not role_name:
            return _verdict(
                trace,
                "deny",
                "names",
                "invalid_role",
                f"role {_show(role)} is empty; denied",
                role,
                tool,
            )
        if not tool_name:
            return _verdict(
                trace,
                "deny",
                "names",
                "invalid_tool",
                f"tool {_show(tool)} requested by role {_show(role)} is empty; denied",
                role,
                tool,
            )
        rules = self._roles.get(role_name)
        if rules is None:
            problem = _form(role)[1]
            if problem is not None:
                return _verdict(
                    trace,
                    "deny",
                    "names",
                    "invalid_role",
                    f"role {_show(role)} is not a valid name: {problem}; denied",
                    role,
                    tool,
                )
        problem = tool_problem
        if problem is not None:
            return _verdict(
                trace,
                "deny",
                "names",
                "invalid_tool",
                f"tool {_show(tool)} requested by role {_show(role)} is not a valid name: "
                f"{problem}; denied",
                role,
                tool,
            )
        memo: dict[tuple[str, str], object] = {}  # each argument read once per call
        if rules is None:
            return _verdict(
                trace,
                "deny",
                "role",
                "unknown_role",
                f"role {_show(role)} has no permission config, so tool {_show(tool)} is "
                "denied by default",
                role,
                tool,
            )
        found = rules.denied.find(tool_name, args, self._workspace, trace, memo, deny=True)
        if found is not None:
            entry, detail = found
            return _verdict(
                trace,
                "deny",
                "denied_tools",
                f"denied_tools:{entry}",
                f"tool {_show(tool)} is denied to role {_show(role)} by its denied_tools "
                f"entry {entry!r}{detail}",
                role,
                tool,
            )
        found = rules.ask.find(tool_name, args, self._workspace, trace, memo, deny=True)
        if found is not None:
            entry, detail = found
            return _verdict(
                trace,
                "ask",
                "ask_tools",
                f"ask_tools:{entry}",
                f"tool {_show(tool)} needs approval for role {_show(role)} by its ask_tools "
                f"entry {entry!r}{detail}",
                role,
                tool,
            )
        if self._workspace.root is not None and isinstance(args, Mapping):
            outside = self._outside_workspace(rules, tool_name, args, trace, memo)
            if outside is not None:
                argument, where = outside
                return _verdict(
                    trace,
                    "deny",
                    "workspace",
                    f"workspace:{argument}",
                    f"tool {_show(tool)} is denied to role {_show(role)}: its argument "
                    f"{argument!r} is {where}, outside the workspace {self.workspace!r}, and "
                    "no rule allows that path by name",
                    role,
                    tool,
                )
        if rules.allowed is not None:
            found = rules.allowed.find(tool_name, args, self._workspace, trace, memo, deny=False)
            if found is not None:
                entry, detail = found
                return _verdict(
                    trace,
                    "allow",
                    "allowed_tools",
                    f"allowed_tools:{entry}",
                    f"tool {_show(tool)} is allowed to role {_show(role)} by its allowed_tools "
                    f"entry {entry!r}{detail}",
                    role,
                    tool,
                )
            return _verdict(
                trace,
                "deny",
                "allowed_tools",
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
            return _verdict(
                trace,
                "allow",
                "mode",
                f"mode:{have_name}>={need_name}",
                f"tool {_show(tool)} is allowed to role {_show(role)}: it needs {need_name} "
                f"and the role has {have_name}",
                role,
                tool,
                need,
                have,
            )
        return _verdict(
            trace,
            "deny",
            "mode",
            f"mode:{have_name}<{need_name}",
            f"tool {_show(tool)} is denied to role {_show(role)}: it needs {need_name} "
            f"and the role has only {have_name}",
            role,
            tool,
            need,
            have,
        )

    def _outside_workspace(
        self,
        rules: _RoleRules,
        tool_name: str,
        args: Mapping[object, object],
        trace: list[RuleCheck] | None,
        memo: dict[tuple[str, str], object],
    ) -> tuple[str, str] | None:
        """Return (argument, resolved path) of the first path outside the workspace, if any.

        A path outside is fine when an ``allowed_tools`` rule of this tool names
        exactly that path for that argument.
        """
        for name, value in args.items():
            if type(name) is not str or type(value) is not str or argument_kind(name) != "path":
                continue
            key = ("path", value)
            resolved = memo.get(key)
            if resolved is None:
                resolved = memo[key] = self._workspace.resolve(value)
            if isinstance(resolved, str) or resolved[1]:  # type: ignore[index]
                continue  # unreadable paths are for the rules to judge; inside is fine
            where = resolved[0]  # type: ignore[index]
            allowed = rules.allowed
            if allowed is not None and allowed.names_path(tool_name, name, where):
                continue
            if trace is not None:
                trace.append(
                    RuleCheck("workspace", name, "match", f"{value!r} resolves to {where!r}")
                )
            return name, where
        return None

    def __repr__(self) -> str:
        return (
            f"PermissionPolicy(roles={sorted(self._roles)!r}, "
            f"tool_requirements={len(self._tool_requirements)}, "
            f"default_requirement={self._default.name})"
        )

    def _requirement(self, tool_name: str) -> PermissionMode:
        exact = self._exact_requirements.get(tool_name)
        for mode, index in self._pattern_requirements:
            if exact is not None and exact >= mode:
                break
            if index.match(tool_name) is not None:
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

    __slots__ = ("_cache", "_cache_size", "_cached", "_decisions", "_lock", "_policy")

    def __init__(
        self, policy: PermissionPolicy, *, cache_size: int = DEFAULT_PERMISSION_CACHE_SIZE
    ) -> None:
        if not isinstance(policy, PermissionPolicy):
            raise InvalidValueError(f"policy must be a PermissionPolicy, got {policy!r}")
        int_at_least("cache_size", cache_size, 0)
        self._policy = policy
        self._cache_size = cache_size
        self._cache: dict[str, dict[str, PermissionOutcome]] = {}
        self._decisions: dict[str, dict[str, PermissionDecision]] = {}
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

    def decide(self, role: str, tool: str, args: object = None) -> PermissionDecision:
        """Decide a call as :meth:`PermissionPolicy.decide` does; cached when ``args`` is None."""
        if args is None and type(role) is str and type(tool) is str:
            by_tool = self._decisions.get(role)
            if by_tool is not None:
                decision = by_tool.get(tool)
                if decision is not None:
                    return decision
            decision = self._policy.decide(role, tool)
            if self._cache_size and len(role) + len(tool) <= _MAX_CACHED_NAME_CHARS:
                with self._lock:
                    if self._cached >= self._cache_size:
                        self._cache, self._decisions, self._cached = {}, {}, 0
                    table = self._decisions.setdefault(role, {})
                    if tool not in table:
                        table[tool] = decision
                        self._cached += 1
            return decision
        return self._policy.decide(role, tool, args)

    def explain(self, role: str, tool: str, args: object = None) -> PermissionExplanation:
        """Return :meth:`PermissionPolicy.explain` for the call (never cached)."""
        return self._policy.explain(role, tool, args)

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
            self._decisions = {}
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
                    self._cache, self._decisions, self._cached = {}, {}, 0
                by_tool = self._cache.get(role)
                if by_tool is None:
                    by_tool = self._cache[role] = {}
                if tool not in by_tool:
                    by_tool[tool] = outcome
                    self._cached += 1
        return outcome


# -- compiled rules (private) ---------------------------------------------------


class _Entries:
    """One list of a role (denied, ask or allowed): plain names and globs, and argument rules.

    Plain entries are in a :class:`NameIndex`; argument rules are kept by the
    exact tool they name, or in a short list for the ones whose tool is a
    glob, so a call tries only the rules of its own tool.
    """

    __slots__ = ("_by_glob", "_by_tool", "_empty", "_layer", "_names")

    def __init__(self, raw_entries: Iterable[str], layer: str) -> None:
        self._layer = layer
        names: list[str] = []
        self._by_tool: dict[str, list[ArgRule]] = {}
        self._by_glob: list[tuple[Glob, ArgRule]] = []
        for raw in raw_entries:
            name, rule = _read_entry(raw)
            if rule is None:
                names.append(name)
            elif is_glob(name):
                self._by_glob.append((Glob(name), rule))
            else:
                self._by_tool.setdefault(name, []).append(rule)
        self._names = NameIndex(names)
        self._empty = not (names or self._by_tool or self._by_glob)

    def find(
        self,
        tool_name: str,
        args: object,
        workspace: Workspace,
        trace: list[RuleCheck] | None,
        memo: dict[tuple[str, str], object],
        *,
        deny: bool,
    ) -> tuple[str, str] | None:
        """Return (entry, detail) of the entry the call matches, or None.

        ``deny``: an argument rule whose arguments cannot be read counts as
        matching (a deny or ask list never lets an unreadable call through);
        otherwise it does not match.
        """
        if self._empty and trace is None:
            return None
        entry = self._names.match(tool_name)
        if trace is not None:
            for candidate in self._names.entries():
                hit = candidate == entry
                trace.append(
                    RuleCheck(
                        self._layer,
                        candidate,
                        "match" if hit else "no_match",
                        f"{tool_name!r} {'matches' if hit else 'does not match'} {candidate!r}",
                    )
                )
        if entry is not None:
            return entry, ""
        rules = self._by_tool.get(tool_name)
        if rules is None and not self._by_glob:
            return None
        if self._by_glob:
            rules = [
                *(rules or ()),
                *(rule for glob, rule in self._by_glob if glob.matches(tool_name)),
            ]
        explain = trace is not None
        for rule in rules or ():
            verdict, why = rule.test(args, workspace, memo, explain=explain)
            if trace is not None:
                trace.append(RuleCheck(self._layer, rule.entry, verdict, why))
            if verdict == "match":
                return rule.entry, f" ({why})"
            if verdict == "unreadable" and deny:
                return rule.entry, f" (it needs the call's arguments to decide and {why})"
        return None

    @property
    def has_arg_rules(self) -> bool:
        """Whether any entry of the list has a pattern over arguments."""
        return bool(self._by_tool or self._by_glob)

    def names_path(self, tool_name: str, argument: str, path: str) -> bool:
        """Whether an argument rule of ``tool_name`` names exactly ``path`` for ``argument``."""
        return any(
            rule.argument == argument and rule.is_literal and rule.pattern == path
            for rule in self._by_tool.get(tool_name, ())
        )


class _RoleRules:
    """One role's config with its names normalised and rules compiled."""

    __slots__ = ("allowed", "ask", "config", "denied", "has_arg_rules", "mode")

    def __init__(self, config: RolePermissionConfig) -> None:
        self.config = config
        self.mode = config.mode
        self.denied = _Entries(config.denied_tools, "denied_tools")
        self.ask = _Entries(config.ask_tools, "ask_tools")
        allowed = config.allowed_tools
        self.allowed = None if allowed is None else _Entries(allowed, "allowed_tools")
        lists = (self.denied, self.ask, self.allowed)
        self.has_arg_rules = any(entries is not None and entries.has_arg_rules for entries in lists)


# -- functions ------------------------------------------------------------------


_FORMS: dict[str, tuple[str, str | None]] = {}
"""Names seen -> (normal form, why it is outside the grammar): each computed once."""


def _form(name: str) -> tuple[str, str | None]:
    """Return ``name``'s normal form and its grammar violation (None: inside), remembered."""
    form = _FORMS.get(name)
    if form is None:
        normal = normalize_permission_name(name)
        form = (normal, grammar_violation(normal) if normal else None)
        if len(name) <= _MAX_CACHED_NAME_CHARS:
            if len(_FORMS) >= DEFAULT_PERMISSION_CACHE_SIZE:
                _FORMS.clear()  # a caller inventing endless names cannot grow memory
            _FORMS[name] = form
    return form


def _verdict(  # noqa: PLR0917 (one call shape at every step of the engine)
    trace: list[RuleCheck] | None,
    effect: Effect,
    layer: str,
    rule: str,
    reason: str,
    role: str,
    tool: str,
    required: PermissionMode | None = None,
    held: PermissionMode | None = None,
) -> PermissionDecision:
    """Make the decision (and note it last in an explanation's trace)."""
    if trace is not None:
        trace.append(RuleCheck(layer, rule, "decided", f"{effect}: {reason}"))
    return PermissionDecision(effect, reason, rule, layer, role, tool, required, held)


def _show(value: object) -> str:
    """Render a caller's name for a reason: repr (control chars escaped), bounded.

    Anything but a str is shown by its type name only, so no caller code runs.
    """
    if type(value) is str and len(value) <= _MAX_SHOWN_CHARS:
        return repr(value)
    if not isinstance(value, str):
        return type(value).__name__
    value = str.__str__(value)
    if len(value) > _MAX_SHOWN_CHARS:
        return f"{value[:_MAX_SHOWN_CHARS]!r}... ({len(value)} chars)"
    return repr(value)


def _read_entry(raw: str) -> tuple[str, ArgRule | None]:
    """Split an entry into its normalised tool name or glob and its argument rule, if any."""
    opening = raw.find("(")
    name = normalize_permission_name(raw if opening < 0 else raw[:opening])
    if opening < 0:
        if ")" in raw:
            raise ValueError("it has ')' without '('")
        return name, None
    return name, read_rule(name, raw[opening:])


def _check_entry_name(name: str, what: str) -> None:
    """Refuse a normalised name or glob outside the grammar, naming the character."""
    if is_glob(name):
        try:
            Glob(name)
        except ValueError as exc:
            raise InvalidValueError(f"{what} is not a valid glob: {exc}") from None
        return
    problem = grammar_violation(name)
    if problem is not None:
        raise InvalidValueError(f"{what} is not a valid name: {problem}")


def _parse_mode(value: object, field: str) -> PermissionMode:
    try:
        return PermissionMode.parse(value)  # type: ignore[arg-type]
    except InvalidValueError:
        raise InvalidValueError(
            f"{field} must be a PermissionMode (or its name or number), got {value!r}"
        ) from None


def _tool_names(value: object, field: str) -> tuple[str, ...]:
    """Check a list of entries once: each a valid name or glob, with a well-formed pattern."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidValueError(f"{field} must be a collection of tool names, got {value!r}")
    names = tuple(value)
    for raw in names:
        if not isinstance(raw, str) or not normalize_permission_name(raw):
            raise InvalidValueError(f"{field} entries must be non-empty str, got {raw!r}")
        try:
            name, _rule = _read_entry(str.__str__(raw))
        except ValueError as exc:
            raise InvalidValueError(f"{field} entry {raw!r} is malformed: {exc}") from None
        _check_entry_name(name, f"{field} entry {raw!r}")
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
