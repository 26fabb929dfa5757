from __future__ import annotations

import json
import pickle
import sys
import threading
import unicodedata
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from techrevati.runtime.permissions import (
    DEFAULT_PERMISSION_CACHE_SIZE,
    PermissionDeniedError,
    PermissionEnforcer,
    PermissionMode,
    PermissionOutcome,
    PermissionPolicy,
    RolePermissionConfig,
    normalize_permission_name,
)
from tests.conftest import examples

M = PermissionMode
HYPOTHESIS = settings(max_examples=examples(200))


def seed_policy() -> PermissionPolicy:
    return PermissionPolicy(
        role_configs={
            "writer": RolePermissionConfig(
                role="writer",
                mode=PermissionMode.FULL_ACCESS,
                denied_tools=["dangerous_tool"],
            ),
            "reader": RolePermissionConfig(role="reader", mode=PermissionMode.READ_ONLY),
        },
        tool_requirements={"dangerous_tool": PermissionMode.FULL_ACCESS},
    )


def policy_of(*configs: RolePermissionConfig, **requirements: M) -> PermissionPolicy:
    return PermissionPolicy.from_configs(configs, tool_requirements=requirements)


# -- PermissionMode ----------------------------------------------------------------


def test_modes_are_ordered() -> None:
    assert M.READ_ONLY < M.WORKSPACE_WRITE < M.FULL_ACCESS
    assert sorted([M.FULL_ACCESS, M.READ_ONLY, M.WORKSPACE_WRITE]) == list(M)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("read_only", M.READ_ONLY),
        (" Workspace_Write ", M.WORKSPACE_WRITE),
        ("full-access", M.FULL_ACCESS),
        (3, M.FULL_ACCESS),
        (M.READ_ONLY, M.READ_ONLY),
    ],
)
def test_mode_parses_names_and_numbers(value: M | str | int, expected: M) -> None:
    assert PermissionMode.parse(value) is expected


@pytest.mark.parametrize("bad", ["admin", "", 0, 4, True, None, 2.0])
def test_mode_parse_rejects_unknown_values_naming_them(bad: object) -> None:
    with pytest.raises(InvalidValueError, match="unknown permission mode") as caught:
        PermissionMode.parse(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(caught.value)


# -- RolePermissionConfig ------------------------------------------------------------


def test_config_stores_lists_as_tuples_and_is_frozen() -> None:
    config = RolePermissionConfig(role="writer", mode=M.FULL_ACCESS, denied_tools=["a", "b"])
    assert config.denied_tools == ("a", "b")
    assert config.allowed_tools is None
    assert hash(config) == hash(
        RolePermissionConfig(role="writer", mode=M.FULL_ACCESS, denied_tools=("a", "b"))
    )
    with pytest.raises(AttributeError):
        config.mode = M.READ_ONLY  # type: ignore[misc]


def test_config_parses_a_mode_name() -> None:
    config = RolePermissionConfig(role="r", mode="workspace_write")  # type: ignore[arg-type]
    assert config.mode is M.WORKSPACE_WRITE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"mode": "superuser"},
            "unknown permission mode 'superuser'; expected one of READ_ONLY, WORKSPACE_WRITE, "
            "FULL_ACCESS",
        ),
        ({"mode": 7}, "unknown permission mode 7; expected one of"),
        ({"role": ""}, "role must be a non-empty str, got ''"),
        ({"role": " \n"}, "role must be a non-empty str, got ' \\n'"),
        ({"role": None}, "role must be a non-empty str, got None"),
        ({"denied_tools": "shell"}, "denied_tools must be a collection of tool names, got 'shell'"),
        ({"denied_tools": ["ok", 3]}, "denied_tools entries must be non-empty str, got 3"),
        ({"denied_tools": [" "]}, "denied_tools entries must be non-empty str, got ' '"),
        (
            {"allowed_tools": "fs.read"},
            "allowed_tools must be a collection of tool names, got 'fs.read'",
        ),
        ({"allowed_tools": 5}, "allowed_tools must be a collection of tool names, got 5"),
        ({"allowed_tools": [""]}, "allowed_tools entries must be non-empty str, got ''"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"role": "writer", "mode": M.READ_ONLY, **kwargs}
    with pytest.raises(InvalidValueError) as caught:
        RolePermissionConfig(**args)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)


# -- PermissionPolicy --------------------------------------------------------------


def test_policy_keeps_configs_and_parsed_requirements_read_only() -> None:
    policy = seed_policy()
    assert set(policy.role_configs) == {"writer", "reader"}
    assert policy.tool_requirements == {"dangerous_tool": M.FULL_ACCESS}
    assert policy.default_requirement is M.READ_ONLY
    with pytest.raises(TypeError):
        policy.role_configs["x"] = policy.role_configs["writer"]  # type: ignore[index]
    assert policy.role_config(" WRITER ") is policy.role_configs["writer"]
    assert policy.role_config("ghost") is None
    assert "writer" in repr(policy)


def test_policy_rejects_a_key_that_does_not_match_its_config() -> None:
    with pytest.raises(InvalidValueError, match="'writer' does not match its config's role 'r'"):
        PermissionPolicy({"writer": RolePermissionConfig(role="r", mode=M.READ_ONLY)})


def test_policy_accepts_keys_equal_after_normalisation() -> None:
    policy = PermissionPolicy({"Writer ": RolePermissionConfig(role="writer", mode=M.READ_ONLY)})
    assert policy.check("writer", "x").allowed


def test_policy_rejects_roles_that_collide_after_normalisation() -> None:
    with pytest.raises(InvalidValueError, match="'writer' and 'WRITER' name the same role"):
        PermissionPolicy(
            {
                "writer": RolePermissionConfig(role="writer", mode=M.READ_ONLY),
                "WRITER": RolePermissionConfig(role="Writer", mode=M.FULL_ACCESS),
            }
        )


def test_policy_rejects_tools_that_collide_after_normalisation() -> None:
    with pytest.raises(InvalidValueError, match="'deploy' and 'Deploy ' name the same tool"):
        PermissionPolicy({}, tool_requirements={"deploy": M.FULL_ACCESS, "Deploy ": M.READ_ONLY})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([],), "role_configs must be a mapping of role -> RolePermissionConfig, got []"),
        (
            ({"r": "not a config"},),
            "role_configs['r'] must be a RolePermissionConfig, got 'not a config'",
        ),
        (
            ({3: RolePermissionConfig(role="r", mode=M.READ_ONLY)},),
            "role_configs keys must be non-empty str, got 3",
        ),
        (
            ({}, ["deploy"]),
            "tool_requirements must be a mapping of tool -> PermissionMode, got ['deploy']",
        ),
        (
            ({}, {"deploy": "root"}),
            "tool_requirements['deploy'] must be a PermissionMode (or its name or number), "
            "got 'root'",
        ),
        (({}, {"": M.READ_ONLY}), "tool_requirements keys must be non-empty str, got ''"),
        (
            ({}, {}, "everything"),
            "default_requirement must be a PermissionMode (or its name or number), "
            "got 'everything'",
        ),
    ],
)
def test_policy_rejects_bad_tables(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(InvalidValueError) as caught:
        PermissionPolicy(*args)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_from_configs_keys_by_role_and_rejects_duplicates() -> None:
    policy = PermissionPolicy.from_configs(
        [RolePermissionConfig(role="a", mode=M.READ_ONLY)], {"t": M.FULL_ACCESS}, M.FULL_ACCESS
    )
    assert list(policy.role_configs) == ["a"]
    assert policy.default_requirement is M.FULL_ACCESS
    assert policy.tool_requirements == {"t": M.FULL_ACCESS}
    assert policy.requirement_for("T") is M.FULL_ACCESS
    with pytest.raises(InvalidValueError) as caught:
        PermissionPolicy.from_configs(
            [
                RolePermissionConfig(role="a", mode=M.READ_ONLY),
                RolePermissionConfig(role="b", mode=M.READ_ONLY),
                RolePermissionConfig(role="b", mode=M.FULL_ACCESS),
            ]
        )
    assert str(caught.value) == "two configs share the role 'b'"


def test_role_config_refuses_a_non_str_naming_it() -> None:
    with pytest.raises(InvalidValueError) as caught:
        seed_policy().role_config(3)  # type: ignore[arg-type]
    assert str(caught.value) == "role must be a str, got 3"


def test_requirement_for_takes_the_strictest_matching_entry() -> None:
    policy = PermissionPolicy(
        {},
        tool_requirements={
            "fs.*": M.WORKSPACE_WRITE,
            "fs.read": M.READ_ONLY,
            "fs.rm*": M.FULL_ACCESS,
            "net.get": M.WORKSPACE_WRITE,
            "*": M.READ_ONLY,
        },
    )
    assert policy.requirement_for("fs.read") is M.WORKSPACE_WRITE
    assert policy.requirement_for("FS.Write") is M.WORKSPACE_WRITE
    assert policy.requirement_for("fs.rmdir") is M.FULL_ACCESS
    assert policy.requirement_for("net.get") is M.WORKSPACE_WRITE
    assert policy.requirement_for("other") is M.READ_ONLY
    with pytest.raises(InvalidValueError, match="tool must be a str"):
        policy.requirement_for(3)  # type: ignore[arg-type]


def test_unnamed_tools_need_the_default_requirement() -> None:
    policy = PermissionPolicy(
        {"r": RolePermissionConfig(role="r", mode=M.WORKSPACE_WRITE)},
        default_requirement="full_access",
    )
    outcome = policy.check("r", "anything")
    assert not outcome.allowed
    assert outcome.rule == "mode:WORKSPACE_WRITE<FULL_ACCESS"


# -- decisions ---------------------------------------------------------------------


def test_seed_example_allows_and_denies_as_documented() -> None:
    enforcer = PermissionEnforcer(seed_policy())

    outcome = enforcer.check("writer", "any_tool")
    assert outcome.allowed
    assert outcome.rule == "mode:FULL_ACCESS>=READ_ONLY"
    assert outcome.reason == (
        "tool 'any_tool' is allowed to role 'writer': it needs READ_ONLY "
        "and the role has FULL_ACCESS"
    )

    denied = enforcer.check("writer", "dangerous_tool")
    assert not denied.allowed
    assert denied.rule == "denied_tools:dangerous_tool"
    assert "'writer'" in denied.reason
    assert "'dangerous_tool'" in denied.reason

    reader = enforcer.check("reader", "dangerous_tool")
    assert not reader.allowed
    assert reader.rule == "mode:READ_ONLY<FULL_ACCESS"
    assert reader.reason == (
        "tool 'dangerous_tool' is denied to role 'reader': it needs FULL_ACCESS "
        "and the role has only READ_ONLY"
    )
    assert enforcer.check("reader", "any_tool").allowed


def table_policy() -> PermissionPolicy:
    """The seed policy plus a role with an allow-list."""
    return PermissionPolicy(
        role_configs={
            **seed_policy().role_configs,
            "agent": RolePermissionConfig(
                role="agent",
                mode=M.READ_ONLY,
                allowed_tools=["fs.*", "deploy"],
                denied_tools=["fs.rm*"],
            ),
        },
        tool_requirements={"dangerous_tool": M.FULL_ACCESS, "deploy": M.FULL_ACCESS},
    )


# Every rule the policy can decide by, with the whole outcome it must give.
EVERY_RULE: list[tuple[object, object, PermissionOutcome]] = [
    (
        3,
        "x",
        PermissionOutcome(False, "role must be a str, got int; denied", "invalid_role", "", "x"),
    ),
    (
        None,
        b"x",
        PermissionOutcome(False, "role must be a str, got NoneType; denied", "invalid_role"),
    ),
    (
        "writer",
        None,
        PermissionOutcome(
            False, "tool must be a str, got NoneType; denied", "invalid_tool", "writer", ""
        ),
    ),
    (
        " \n",
        "x",
        PermissionOutcome(False, "role ' \\n' is empty; denied", "invalid_role", " \n", "x"),
    ),
    (
        "writer",
        "\u200b",
        PermissionOutcome(
            False,
            "tool '\\u200b' requested by role 'writer' is empty; denied",  # escaped
            "invalid_tool",
            "writer",
            "\u200b",
        ),
    ),
    (
        "Admin",
        "any_tool",
        PermissionOutcome(
            False,
            "role 'Admin' has no permission config, so tool 'any_tool' is denied by default",
            "unknown_role",
            "Admin",
            "any_tool",
        ),
    ),
    (
        "Writer",
        "Dangerous_Tool ",
        PermissionOutcome(
            False,
            "tool 'Dangerous_Tool ' is denied to role 'Writer' by its denied_tools entry "
            "'dangerous_tool'",
            "denied_tools:dangerous_tool",
            "Writer",
            "Dangerous_Tool ",
        ),
    ),
    (
        "agent",
        "FS.rmdir",
        PermissionOutcome(
            False,
            "tool 'FS.rmdir' is denied to role 'agent' by its denied_tools entry 'fs.rm*'",
            "denied_tools:fs.rm*",
            "agent",
            "FS.rmdir",
        ),
    ),
    (
        "agent",
        "FS.Read",
        PermissionOutcome(
            True,
            "tool 'FS.Read' is allowed to role 'agent' by its allowed_tools entry 'fs.*'",
            "allowed_tools:fs.*",
            "agent",
            "FS.Read",
        ),
    ),
    (
        "agent",
        "deploy",
        PermissionOutcome(
            True,
            "tool 'deploy' is allowed to role 'agent' by its allowed_tools entry 'deploy'",
            "allowed_tools:deploy",
            "agent",
            "deploy",
        ),
    ),
    (
        "agent",
        "net.get",
        PermissionOutcome(
            False,
            "tool 'net.get' is denied to role 'agent': it is not in the role's allowed_tools",
            "not_in_allowed_tools",
            "agent",
            "net.get",
        ),
    ),
    (
        "reader",
        "read",
        PermissionOutcome(
            True,
            "tool 'read' is allowed to role 'reader': it needs READ_ONLY and the role has "
            "READ_ONLY",
            "mode:READ_ONLY>=READ_ONLY",
            "reader",
            "read",
        ),
    ),
    (
        "reader",
        "DEPLOY",
        PermissionOutcome(
            False,
            "tool 'DEPLOY' is denied to role 'reader': it needs FULL_ACCESS and the role has "
            "only READ_ONLY",
            "mode:READ_ONLY<FULL_ACCESS",
            "reader",
            "DEPLOY",
        ),
    ),
]


@pytest.mark.parametrize(("role", "tool", "expected"), EVERY_RULE, ids=lambda v: repr(v)[:40])
def test_every_rule_gives_its_whole_outcome(
    role: object, tool: object, expected: PermissionOutcome
) -> None:
    policy = table_policy()
    enforcer = PermissionEnforcer(policy)
    outcome = policy.check(role, tool)
    assert outcome == expected
    assert outcome.to_dict() == {
        "allowed": expected.allowed,
        "reason": expected.reason,
        "rule": expected.rule,
        "role": expected.role,
        "tool": expected.tool,
    }
    assert enforcer.check(role, tool) == expected  # type: ignore[arg-type]
    assert enforcer.check(role, tool) == expected  # type: ignore[arg-type]  # cached or not
    assert enforcer.is_allowed(role, tool) is expected.allowed  # type: ignore[arg-type]
    assert bool(outcome) is expected.allowed


def test_unknown_role_is_denied_by_default_with_a_reason() -> None:
    outcome = PermissionEnforcer(seed_policy()).check("admin", "any_tool")
    assert not outcome.allowed
    assert outcome.rule == "unknown_role"
    assert "'admin'" in outcome.reason
    assert "'any_tool'" in outcome.reason
    assert "denied by default" in outcome.reason


def test_empty_policy_denies_everything() -> None:
    enforcer = PermissionEnforcer(PermissionPolicy({}))
    assert not enforcer.is_allowed("writer", "read")


def test_denied_beats_allowed_beats_mode() -> None:
    policy = policy_of(
        RolePermissionConfig(
            role="reader",
            mode=M.READ_ONLY,
            allowed_tools=["deploy", "search", "shell"],
            denied_tools=["shell"],
        ),
        deploy=M.FULL_ACCESS,
    )
    shell = policy.check("reader", "shell")
    assert (shell.allowed, shell.rule) == (False, "denied_tools:shell")
    deploy = policy.check("reader", "deploy")
    assert (deploy.allowed, deploy.rule) == (True, "allowed_tools:deploy")
    assert "by its allowed_tools entry 'deploy'" in deploy.reason
    other = policy.check("reader", "read_file")
    assert (other.allowed, other.rule) == (False, "not_in_allowed_tools")
    assert "not in the role's allowed_tools" in other.reason


def test_an_empty_allow_list_allows_nothing() -> None:
    policy = policy_of(RolePermissionConfig(role="r", mode=M.FULL_ACCESS, allowed_tools=[]))
    assert policy.check("r", "read").rule == "not_in_allowed_tools"


def test_globs_match_with_fnmatch_semantics_on_normalised_names() -> None:
    policy = policy_of(
        RolePermissionConfig(
            role="agent",
            mode=M.FULL_ACCESS,
            allowed_tools=["fs.read*", "search", "net.[gh]et"],
            denied_tools=["FS.Read_Secret*"],
        )
    )
    assert policy.check("agent", "fs.read_file").rule == "allowed_tools:fs.read*"
    assert policy.check("agent", "FS.READ_FILE").allowed
    assert policy.check("agent", "net.get").rule == "allowed_tools:net.[gh]et"
    assert not policy.check("agent", "net.set").allowed
    assert policy.check("agent", "fs.read_secrets").rule == "denied_tools:fs.read_secret*"
    assert not policy.check("agent", "fs.write").allowed
    assert not policy.check("agent", "xfs.read").allowed  # globs match the whole name


def test_several_deny_globs_name_the_one_that_matched() -> None:
    policy = policy_of(
        RolePermissionConfig(role="r", mode=M.FULL_ACCESS, denied_tools=["a*", "b?", "*z"])
    )
    assert policy.check("r", "buzz").rule == "denied_tools:*z"
    assert policy.check("r", "bo").rule == "denied_tools:b?"
    assert policy.check("r", "apple").rule == "denied_tools:a*"
    assert policy.check("r", "boo").allowed


def test_role_names_are_normalised_too() -> None:
    enforcer = PermissionEnforcer(seed_policy())
    for role in ("WRITER", " writer\n", "\uff37riter"):
        outcome = enforcer.check(role, "dangerous_tool")
        assert outcome.rule == "denied_tools:dangerous_tool"
        assert outcome.role == role


BYPASS_ATTEMPTS = [
    "dangerous_tool",
    "Dangerous_Tool ",
    "DANGEROUS_TOOL",
    "\u0044angerous_tool",
    "\uff24\uff41\uff4e\uff47\uff45\uff52\uff4f\uff55\uff53_tool",  # full-width letters
    "dangerous\uff3ftool",  # full-width low line
    "dangerous_tool\n",
    "\t dangerous_tool\r\n",
    "dangerous_tool\u3000",  # ideographic space
    "dangerous_tool\u00a0",  # no-break space
    "danger\u200bous_tool",  # zero-width space
    "\ufeffdangerous_tool",  # byte order mark
    "dan\u00adgerous_tool",  # soft hyphen
    "dangerous_tool\u200d",  # zero-width joiner
    "\u202edangerous_tool",  # right-to-left override
    "dangerous_\U0001d42dool",  # mathematical bold t
]


@pytest.mark.parametrize("tool", BYPASS_ATTEMPTS)
def test_case_whitespace_and_unicode_tricks_cannot_bypass_a_deny_rule(tool: str) -> None:
    enforcer = PermissionEnforcer(seed_policy())
    outcome = enforcer.check("writer", tool)
    assert not outcome.allowed
    assert outcome.rule == "denied_tools:dangerous_tool"
    assert outcome.tool == tool
    assert not enforcer.is_allowed("writer", tool)
    assert enforcer.filter_tools("writer", [tool]) == []


def test_requirements_cannot_be_dodged_by_unicode_either() -> None:
    enforcer = PermissionEnforcer(seed_policy())
    for tool in BYPASS_ATTEMPTS:
        assert enforcer.check("reader", tool).rule == "mode:READ_ONLY<FULL_ACCESS"


def test_combining_sequences_and_compatibility_forms_are_caught() -> None:
    policy = policy_of(RolePermissionConfig(role="r", mode=M.FULL_ACCESS, denied_tools=["\u212a"]))
    assert not policy.check("r", "k").allowed  # the Kelvin sign folds to k: the entry is k
    for spelling in ("cafe\u0301", "CAFE\u0301", "caf\u00e9"):  # outside the ASCII grammar
        outcome = policy.check("r", spelling)
        assert not outcome.allowed
        assert outcome.rule == "invalid_tool"
        assert "U+00E9 LATIN SMALL LETTER E WITH ACUTE" in outcome.reason


def test_an_entry_outside_the_grammar_is_refused_not_left_to_never_match() -> None:
    with pytest.raises(InvalidValueError, match=r"U\+00E9"):
        RolePermissionConfig(role="r", mode=M.FULL_ACCESS, denied_tools=["caf\u00e9"])
    with pytest.raises(InvalidValueError, match=r"U\+002F SOLIDUS"):
        RolePermissionConfig(role="r", mode=M.FULL_ACCESS, allowed_tools=["fs/read"])


@pytest.mark.parametrize(
    ("role", "tool", "rule"),
    [
        (3, "x", "invalid_role"),
        (None, "x", "invalid_role"),
        (["writer"], "x", "invalid_role"),
        ("writer", None, "invalid_tool"),
        ("writer", b"dangerous_tool", "invalid_tool"),
        ("writer", {"x": 1}, "invalid_tool"),
        ("", "x", "invalid_role"),
        ("writer", "  \n", "invalid_tool"),
        ("writer", "\u200b", "invalid_tool"),
    ],
)
def test_malformed_names_are_denied_never_raised(role: object, tool: object, rule: str) -> None:
    enforcer = PermissionEnforcer(seed_policy())
    outcome = enforcer.check(role, tool)  # type: ignore[arg-type]
    assert not outcome.allowed
    assert outcome.rule == rule
    assert "denied" in outcome.reason


def test_odd_objects_are_denied_without_running_their_code() -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("repr ran")

        def __str__(self) -> str:
            raise RuntimeError("str ran")

    enforcer = PermissionEnforcer(seed_policy())
    role = enforcer.check(Hostile(), "x")  # type: ignore[arg-type]
    assert (role.rule, role.reason, role.tool) == (
        "invalid_role",
        "role must be a str, got Hostile; denied",
        "x",
    )
    tool = enforcer.check("writer", Hostile())  # type: ignore[arg-type]
    assert (tool.rule, tool.role) == ("invalid_tool", "writer")


def test_str_subclasses_are_judged_by_their_text() -> None:
    class Sneaky(str):
        __slots__ = ()

        def strip(self, chars: str | None = None) -> str:
            return "harmless"

        def lower(self) -> str:
            return "harmless"

        def isascii(self) -> bool:
            return True

        def __hash__(self) -> int:
            return hash("any_tool")

        def __eq__(self, other: object) -> bool:
            return True

    enforcer = PermissionEnforcer(seed_policy())
    assert enforcer.check("writer", "any_tool").allowed  # cache a harmless pair first
    outcome = enforcer.check("writer", Sneaky("dangerous_tool"))
    assert outcome.rule == "denied_tools:dangerous_tool"
    assert type(outcome.tool) is str


def test_long_names_are_shortened_in_reasons() -> None:
    tool = "x" * 10_000 + "\n"
    outcome = PermissionEnforcer(seed_policy()).check("ghost", tool)
    assert len(outcome.reason) < 300
    assert "10001 chars" in outcome.reason
    assert outcome.tool == tool


def test_names_up_to_80_characters_are_shown_whole() -> None:
    policy = seed_policy()
    whole = "t" * 80
    assert policy.check("ghost", whole).reason == (
        f"role 'ghost' has no permission config, so tool '{whole}' is denied by default"
    )
    longer = "t" * 81
    assert policy.check("ghost", longer).reason == (
        f"role 'ghost' has no permission config, so tool '{whole}'... (81 chars) is denied "
        "by default"
    )


def test_control_characters_are_escaped_in_reasons() -> None:
    outcome = PermissionEnforcer(seed_policy()).check("ghost\nINFO fake log line", "t")
    assert "\n" not in outcome.reason
    assert "\\n" in outcome.reason


# -- outcome, error and helpers ----------------------------------------------------


def test_outcome_is_frozen_json_and_truthy_only_when_allowed() -> None:
    enforcer = PermissionEnforcer(seed_policy())
    allowed = enforcer.check("writer", "any_tool")
    denied = enforcer.check("reader", "dangerous_tool")
    assert bool(allowed) is True
    assert bool(denied) is False
    data = denied.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["rule"] == "mode:READ_ONLY<FULL_ACCESS"
    assert (data["role"], data["tool"]) == ("reader", "dangerous_tool")
    with pytest.raises(AttributeError):
        denied.allowed = True  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"allowed": 1}, "allowed must be a bool, got 1"),
        ({"reason": ""}, "reason must be a non-empty str, got ''"),
        ({"rule": None}, "rule must be a non-empty str, got None"),
    ],
)
def test_outcome_validates_its_fields(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"allowed": False, "reason": "r", "rule": "x", **kwargs}
    with pytest.raises(InvalidValueError) as caught:
        PermissionOutcome(**args)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_require_returns_allowed_outcomes_and_raises_with_the_denial() -> None:
    enforcer = PermissionEnforcer(seed_policy())
    assert enforcer.require("writer", "any_tool").allowed
    with pytest.raises(PermissionDeniedError) as caught:
        enforcer.require("writer", "Dangerous_Tool")
    error = caught.value
    assert error.outcome is enforcer.check("writer", "Dangerous_Tool")
    assert str(error) == error.outcome.reason
    assert isinstance(error, PermissionError)
    assert isinstance(error, TechrevatiError)


def test_permission_denied_error_pickles_with_its_outcome() -> None:
    error = PermissionDeniedError(PermissionEnforcer(seed_policy()).check("ghost", "x"))
    copy = pickle.loads(pickle.dumps(error))
    assert copy.outcome == error.outcome
    assert str(copy) == str(error)


def test_filter_tools_keeps_order_and_the_callers_strings() -> None:
    enforcer = PermissionEnforcer(seed_policy())
    tools = ["b", " Dangerous_Tool", "a", "B", "dangerous_tool", "b"]
    kept = enforcer.filter_tools("writer", tools)
    assert kept == ["b", "a", "B", "b"]
    assert all(k is t for k, t in zip(kept, [tools[0], tools[2], tools[3], tools[5]], strict=True))
    assert enforcer.filter_tools("ghost", tools) == []
    assert enforcer.filter_tools("writer", iter(["x", 3, "y"])) == ["x", "y"]  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="not the str"):
        enforcer.filter_tools("writer", "abc")


def test_normalize_permission_name_is_idempotent_on_examples() -> None:
    for name in [*BYPASS_ATTEMPTS, "Stra\u00dfe", "\u1e9e", "\ufb00", "\u01f0", "\u0390", "x"]:
        once = normalize_permission_name(name)
        assert normalize_permission_name(once) == once
        assert unicodedata.is_normalized("NFKC", once)
    assert normalize_permission_name(" Stra\u00dfe ") == "strasse"


# -- the cache ---------------------------------------------------------------------


def test_cache_returns_the_same_outcome_object() -> None:
    enforcer = PermissionEnforcer(seed_policy())
    first = enforcer.check("writer", "dangerous_tool")
    assert enforcer.check("writer", "dangerous_tool") is first
    assert enforcer.cache_size == DEFAULT_PERMISSION_CACHE_SIZE
    enforcer.clear_cache()
    again = enforcer.check("writer", "dangerous_tool")
    assert again is not first
    assert again == first


def test_cache_is_bounded_against_endless_new_names() -> None:
    enforcer = PermissionEnforcer(seed_policy(), cache_size=8)
    for i in range(1000):
        assert enforcer.check(f"role{i % 3}", f"tool{i}").rule == "unknown_role"
        stored = sum(len(by_tool) for by_tool in enforcer._cache.values())
        assert stored <= 8
        assert stored == enforcer._cached


def test_long_names_are_never_cached() -> None:
    enforcer = PermissionEnforcer(seed_policy())
    tool = "t" * 300
    assert enforcer.check("writer", tool) is not enforcer.check("writer", tool)
    assert enforcer._cached == 0
    longest = "t" * (256 - len("writer"))  # role and tool together: 256 characters
    assert enforcer.check("writer", longest) is enforcer.check("writer", longest)
    assert enforcer.check("writer", longest + "t") is not enforcer.check("writer", longest + "t")
    assert enforcer._cached == 1


def test_cleared_cache_holds_a_full_cache_size_again() -> None:
    enforcer = PermissionEnforcer(seed_policy(), cache_size=2)
    enforcer.check("writer", "a")
    enforcer.check("writer", "b")
    enforcer.clear_cache()
    assert enforcer._cached == 0
    first = enforcer.check("writer", "a")
    second = enforcer.check("reader", "b")
    assert enforcer.check("writer", "a") is first
    assert enforcer.check("reader", "b") is second
    assert enforcer._cached == 2


def test_cache_size_zero_disables_caching() -> None:
    enforcer = PermissionEnforcer(seed_policy(), cache_size=0)
    assert enforcer.check("writer", "x") is not enforcer.check("writer", "x")
    assert enforcer.check("writer", "x") == enforcer.check("writer", "x")


def test_enforcer_validates_its_arguments() -> None:
    with pytest.raises(InvalidValueError) as refused:
        PermissionEnforcer({"writer": "x"})  # type: ignore[arg-type]
    assert str(refused.value) == "policy must be a PermissionPolicy, got {'writer': 'x'}"
    with pytest.raises(InvalidValueError) as caught:
        PermissionEnforcer(seed_policy(), cache_size=-1)
    assert str(caught.value) == "cache_size must be an int >= 0, got -1"
    assert "cache_size=4096" in repr(PermissionEnforcer(seed_policy()))


@pytest.fixture
def fast_switching() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("fast_switching")
def test_threads_sharing_a_small_cache_always_get_the_right_answer() -> None:
    policy = seed_policy()
    enforcer = PermissionEnforcer(policy, cache_size=16)
    pairs = [
        (role, tool)
        for role in ("writer", "reader", "ghost", "WRITER ")
        for tool in ("dangerous_tool", "Dangerous_Tool ", "read", "write", "x1", "x2", "x3")
    ]
    expected = {pair: policy.check(*pair) for pair in pairs}
    threads_n, rounds = 8, 150
    allowed_counts = [0] * threads_n
    wrong: list[tuple[str, str]] = []
    barrier = threading.Barrier(threads_n)

    def hammer(index: int) -> None:
        barrier.wait()
        for _ in range(rounds):
            for pair in pairs:
                outcome = enforcer.check(*pair)
                if outcome != expected[pair]:
                    wrong.append(pair)
                allowed_counts[index] += outcome.allowed

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    allowed_per_round = sum(outcome.allowed for outcome in expected.values())
    assert allowed_counts == [rounds * allowed_per_round] * threads_n
    assert enforcer._cached <= 16


# -- properties --------------------------------------------------------------------

_WHITESPACE = st.sampled_from([" ", "\t", "\n", "\r", "\u3000", "\u00a0", "\u2003", "\x0b"])
_INVISIBLE = st.sampled_from(["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"])
_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.-0123456789", min_size=1, max_size=20)


@st.composite
def disguised(draw: st.DrawFn, name: str) -> str:
    """Spell ``name`` with random case, full-width letters, invisible characters and padding."""
    chars: list[str] = []
    for original in name:
        char = original.upper() if original.isalpha() and draw(st.booleans()) else original
        if draw(st.integers(0, 3)) == 0:
            char = chr(ord(char) + 0xFEE0)  # the full-width form of any printable ASCII
        chars.append(char)
        if draw(st.integers(0, 5)) == 0:
            chars.append(draw(_INVISIBLE))
    left = "".join(draw(st.lists(_WHITESPACE, max_size=3)))
    right = "".join(draw(st.lists(_WHITESPACE, max_size=3)))
    return left + "".join(chars) + right


@HYPOTHESIS
@given(data=st.data(), name=_NAMES.filter(lambda n: not set(n) <= set("._-0123456789")))
def test_any_disguise_of_a_denied_tool_is_denied(data: st.DataObject, name: str) -> None:
    policy = policy_of(RolePermissionConfig(role="writer", mode=M.FULL_ACCESS, denied_tools=[name]))
    enforcer = PermissionEnforcer(policy)
    tool = data.draw(disguised(name))
    outcome = enforcer.check("writer", tool)
    assert not outcome.allowed, (name, tool)
    assert outcome.rule == f"denied_tools:{name}"


@HYPOTHESIS
@given(role=st.text(max_size=12), tool=st.text(max_size=12))
def test_cached_answers_equal_uncached_ones_and_never_raise(role: str, tool: str) -> None:
    policy = seed_policy()
    enforcer = PermissionEnforcer(policy)
    first = enforcer.check(role, tool)
    assert first == enforcer.check(role, tool) == policy.check(role, tool)
    if first.allowed:
        assert normalize_permission_name(role) in {"writer", "reader"}


@HYPOTHESIS
@given(name=st.text(max_size=20))
def test_normalize_permission_name_is_idempotent(name: str) -> None:
    once = normalize_permission_name(name)
    assert normalize_permission_name(once) == once
    assert once == once.strip()
    assert unicodedata.is_normalized("NFKC", once)
