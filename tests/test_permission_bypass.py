"""Adversarial tests for permissions: spellings, allow-list escapes, argument attacks.

Every test here tries to get something past a :class:`PermissionPolicy` that it
should refuse: a denied tool spelt with invisible, control or look-alike
characters; a name that climbs out of an allow-list glob; a shell command, path
or URL argument that reads as allowed but does something else. A hole that the
code had was kept as a strict xfail naming the exact input until it was fixed.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.permissions import (
    PermissionDecision,
    PermissionEnforcer,
    PermissionMode,
    PermissionPolicy,
    RolePermissionConfig,
    normalize_permission_name,
)
from tests.conftest import examples

M = PermissionMode
HYPOTHESIS = settings(max_examples=examples(300))

GRAMMAR = re.compile(r"[a-z0-9_.:\-]+")
"""The name grammar, written out again here (not imported) so the tests check it."""


def _deny_list_policy() -> PermissionPolicy:
    return PermissionPolicy.from_configs(
        [
            RolePermissionConfig(
                role="writer",
                mode=M.FULL_ACCESS,
                denied_tools=["dangerous_tool", "shell.*"],
            )
        ]
    )


def _assert_denied(policy: PermissionPolicy, role: str, tool: str, args: object = None) -> str:
    """Assert ``tool`` is not allowed (decide, check and a cached enforcer); return the reason."""
    decision = policy.decide(role, tool, args)
    assert not decision.allowed, (tool, args, decision)
    assert decision.effect in {"deny", "ask"}
    assert decision.reason.strip(), decision
    assert decision.rule.strip(), decision
    if args is None:
        assert not policy.check(role, tool).allowed
        enforcer = PermissionEnforcer(policy)
        assert not enforcer.is_allowed(role, tool)
        assert not enforcer.is_allowed(role, tool)  # the cached answer too
    return decision.reason


# -- 1. the 43 spellings -----------------------------------------------------------

FORMAT_CHARS = (
    "\u200b",  # ZERO WIDTH SPACE
    "\u200c",  # ZERO WIDTH NON-JOINER
    "\u200d",  # ZERO WIDTH JOINER
    "\u2060",  # WORD JOINER
    "\ufeff",  # ZERO WIDTH NO-BREAK SPACE (BOM)
    "\u00ad",  # SOFT HYPHEN
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u2066",  # LEFT-TO-RIGHT ISOLATE
    "\u180e",  # MONGOLIAN VOWEL SEPARATOR
    "\u061c",  # ARABIC LETTER MARK
    "\U000e0001",  # LANGUAGE TAG
)
"""Invisible Unicode format characters (Cf): normalisation drops them."""

INVISIBLE_NOT_FORMAT = (
    "\u034f",  # COMBINING GRAPHEME JOINER (Mn)
    "\ufe0f",  # VARIATION SELECTOR-16 (Mn)
    "\ufe00",  # VARIATION SELECTOR-1 (Mn)
    "\U000e0100",  # VARIATION SELECTOR-17 (Mn)
    "\u180b",  # MONGOLIAN FREE VARIATION SELECTOR ONE (Mn)
    "\u3164",  # HANGUL FILLER (Lo)
    "\u115f",  # HANGUL CHOSEONG FILLER (Lo)
    "\uffa0",  # HALFWIDTH HANGUL FILLER (Lo)
    "\u2800",  # BRAILLE PATTERN BLANK (So)
)
"""Invisible characters that are not format characters: they stay, outside the grammar."""

DENIED = "denied"
"""Expected outcome of a spelling that normalises onto a deny-list entry."""

# (spelling, expected): expected is DENIED (the deny list itself must catch it) or
# the code point the reason must name (of the normalised name: NFKC maps U+3164 and
# U+FFA0 to U+1160, and composes 'c' + U+0301 into U+0107).
SPELLINGS: list[tuple[str, str]] = [
    # invisible characters that are not format characters, inside and around the names
    ("shell\u034f.exec", "U+034F"),
    ("dangerous\u034f_tool", "U+034F"),
    ("shell.exec\ufe0f", "U+FE0F"),
    ("\ufe0fdangerous_tool", "U+FE0F"),
    ("shell.\ufe00exec", "U+FE00"),
    ("dangerous_tool\ufe00", "U+FE00"),
    ("shell.exec\U000e0100", "U+E0100"),
    ("\U000e0100shell.exec", "U+E0100"),
    ("shell\u180b.exec", "U+180B"),
    ("dangerous_\u180btool", "U+180B"),
    ("\u3164shell.exec", "U+1160"),
    ("dangerous_tool\u3164", "U+1160"),
    ("shell.\u115fexec", "U+115F"),
    ("\u115fdangerous_tool", "U+115F"),
    ("shell.exec\uffa0", "U+1160"),
    ("dangerous\uffa0_tool", "U+1160"),
    ("shell.exec\u2800", "U+2800"),
    ("\u2800dangerous_tool", "U+2800"),
    # control characters
    ("shell.exec\x00", "U+0000"),
    ("\x00shell.exec", "U+0000"),
    ("dangerous_tool\x7f", "U+007F"),
    ("shell\x7f.exec", "U+007F"),
    ("shell.exec\x1b", "U+001B"),
    ("\x1b[31mshell.exec", "U+001B"),
    ("shell.ex\x0bec", "U+000B"),
    ("dangerous\x08_tool", "U+0008"),
    ("dangerous_tool\x07", "U+0007"),
    ("shell\t.exec", "U+0009"),
    ("shell\x9b.exec", "U+009B"),
    ("shell.exec\x0b", DENIED),  # VT around the name is whitespace: trimmed
    ("dangerous_tool\x0c", DENIED),  # FF, likewise
    ("shell.exec\x1f", DENIED),  # UNIT SEPARATOR counts as whitespace
    ("shell.exec\x85", DENIED),  # NEXT LINE, likewise
    ("shell.exec\r", DENIED),
    # path and punctuation variants
    ("shell/exec", "U+002F"),
    ("./shell.exec", "U+002F"),
    ("shell.exec/", "U+002F"),
    ("shell\u3002exec", "U+3002"),
    ("shell\\exec", "U+005C"),
    ("shell\uff0fexec", "U+002F"),  # FULLWIDTH SOLIDUS: NFKC gives '/'
    ("dangerous\u2010tool", "U+2010"),  # HYPHEN is not '-'
    ("shell\u3000.exec", "U+0020"),  # IDEOGRAPHIC SPACE inside: NFKC gives ' '
    ("shell\uff0eexec", DENIED),  # FULLWIDTH FULL STOP: NFKC gives '.'
    ("shell\u2024exec", DENIED),  # ONE DOT LEADER, likewise
    ("shell\ufe52exec", DENIED),  # SMALL FULL STOP, likewise
    ("dangerous\uff3ftool", DENIED),  # FULLWIDTH LOW LINE
    ("\uff53\uff48\uff45\uff4c\uff4c\uff0e\uff45\uff58\uff45\uff43", DENIED),  # all full-width
    ("\u017fhell.exec", DENIED),  # LATIN SMALL LETTER LONG S folds to 's'
    ("dangerous_tool\u00ad", DENIED),  # SOFT HYPHEN is a format character: dropped
    ("shell.exec\u3000", DENIED),  # IDEOGRAPHIC SPACE around: trimmed
    # combinations
    ("Shell\u034f.EXEC\x00", "U+034F"),
    ("shell.exec\x00\u034f", "U+0000"),
    ("\u200bshell\uff0eexec\u3164", "U+1160"),
    (" SHELL\uff0eEXEC\u200d ", DENIED),
    ("DANGEROUS_TOOL\u2800", "U+2800"),
    ("shell.exec\u0301", "U+0107"),  # 'c' + COMBINING ACUTE composes to U+0107
    ("\u202eshell\u2024exec\u2060", DENIED),
    ("shell\uff0e\u034fexec", "U+034F"),
]


def test_the_spellings_are_at_least_43_and_distinct() -> None:
    spellings = [spelling for spelling, _ in SPELLINGS]
    assert len(spellings) >= 43
    assert len(set(spellings)) == len(spellings)


def test_the_character_classes_are_what_the_spellings_assume() -> None:
    assert all(unicodedata.category(char) == "Cf" for char in FORMAT_CHARS)
    assert not any(unicodedata.category(char) == "Cf" for char in INVISIBLE_NOT_FORMAT)
    # Each invisible non-format character survives normalisation and leaves the grammar.
    for char in INVISIBLE_NOT_FORMAT:
        normal = normalize_permission_name(f"a{char}b")
        assert GRAMMAR.fullmatch(normal) is None, hex(ord(char))


@pytest.mark.parametrize(("spelling", "expected"), SPELLINGS)
def test_every_spelling_of_a_denied_tool_is_denied_with_a_reason(
    spelling: str, expected: str
) -> None:
    policy = _deny_list_policy()
    reason = _assert_denied(policy, "writer", spelling)
    decision = policy.decide("writer", spelling)
    assert decision.effect == "deny"
    normal = normalize_permission_name(spelling)
    if expected == DENIED:
        assert GRAMMAR.fullmatch(normal), normal
        assert decision.rule in {"denied_tools:dangerous_tool", "denied_tools:shell.*"}
        assert decision.layer == "denied_tools"
    else:
        assert GRAMMAR.fullmatch(normal) is None, normal
        assert decision.rule == "invalid_tool"
        assert decision.layer == "names"
        assert f"{expected} " in reason, reason
        assert "at index" in reason
        assert "outside the grammar" in reason


def test_the_reason_names_the_first_offending_character_and_its_index() -> None:
    reason = _deny_list_policy().decide("writer", "shell\u034f.exec").reason
    assert "U+034F COMBINING GRAPHEME JOINER at index 5" in reason


@pytest.mark.parametrize(
    "entry",
    [
        "shell\u034f.*",
        "shell/exec",
        "shell\u3002exec",
        "shell\\exec",
        "dangerous\x00tool",
        "shell.exec\u2800",
        "a b",
    ],
)
def test_a_config_entry_outside_the_grammar_is_refused(entry: str) -> None:
    for field in ("denied_tools", "allowed_tools", "ask_tools"):
        with pytest.raises(InvalidValueError, match=r"U\+[0-9A-F]{4}"):
            RolePermissionConfig("writer", M.FULL_ACCESS, **{field: [entry]})


def test_a_role_spelt_outside_the_grammar_is_denied_as_invalid_role() -> None:
    policy = _deny_list_policy()
    decision = policy.decide("writer\u034f", "any_tool")
    assert not decision.allowed
    assert decision.rule == "invalid_role"
    assert "U+034F" in decision.reason


# -- 2. allow-list escapes --------------------------------------------------------


def _allow_list_policy(*allowed: str) -> PermissionPolicy:
    return PermissionPolicy.from_configs(
        [RolePermissionConfig(role="reader", mode=M.FULL_ACCESS, allowed_tools=list(allowed))]
    )


@pytest.mark.parametrize(
    ("tool", "rule"),
    [
        ("fs.read\nshell.exec", "invalid_tool"),
        ("fs.read\\nshell.exec", "invalid_tool"),
        ("fs.read/../write", "invalid_tool"),
        ("fs.read.secret", "not_in_allowed_tools"),  # '*' does not cross '.'
        ("fs.read:secret", "not_in_allowed_tools"),  # nor ':'
        ("fs.read\u200b.secret", "not_in_allowed_tools"),  # the ZWSP goes, the '.' stays
        ("fs.read\uff0esecret", "not_in_allowed_tools"),  # full-width '.' is a '.'
        ("fs.read\x00", "invalid_tool"),
        ("fs.read\x00.secret", "invalid_tool"),
        ("fs.read\u034f", "invalid_tool"),
        ("fs.read\u3002secret", "invalid_tool"),
        ("fs.reads/../../x", "invalid_tool"),
    ],
)
def test_a_name_cannot_escape_an_allow_list_glob(tool: str, rule: str) -> None:
    policy = _allow_list_policy("fs.read*")
    _assert_denied(policy, "reader", tool)
    assert policy.decide("reader", tool).rule == rule


@pytest.mark.parametrize("tool", ["fs.read", "fs.readme", "FS.Read_File", "fs.read-all"])
def test_the_allow_list_glob_still_allows_its_own_segment(tool: str) -> None:
    decision = _allow_list_policy("fs.read*").decide("reader", tool)
    assert decision.allowed
    assert decision.rule == "allowed_tools:fs.read*"


def test_double_star_crosses_separators_but_not_the_grammar() -> None:
    policy = _allow_list_policy("fs.**")
    assert policy.decide("reader", "fs.a.b").allowed
    assert policy.decide("reader", "fs.a:b.c").allowed
    assert not policy.decide("reader", "fs.a/b").allowed
    assert not policy.decide("reader", "fs.a\x00b").allowed
    assert not policy.decide("reader", "fsx.a").allowed


def test_question_mark_and_classes_do_not_match_a_separator() -> None:
    assert not _allow_list_policy("fs.read?").decide("reader", "fs.read.").allowed
    assert not _allow_list_policy("fs.re[!x]d").decide("reader", "fs.re.d").allowed
    assert not _allow_list_policy("fs.re[!x]d").decide("reader", "fs.re:d").allowed
    assert _allow_list_policy("fs.re[!x]d").decide("reader", "fs.read").allowed


# Found by this suite and fixed (was a strict xfail).
def test_a_class_range_does_not_reach_a_separator() -> None:
    assert not _allow_list_policy("fs[--0]read").decide("reader", "fs.read").allowed


# -- 3. argument attacks ----------------------------------------------------------

ARG_RULES = [
    "shell(npm run *)",
    "fs.write(path:src/**)",
    "http.get(url:https://api.example.com/*)",
]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ok.py").write_text("", encoding="utf-8")
    (tmp_path / ".git").mkdir()
    os.symlink("/etc", tmp_path / "src" / "etc_link")
    os.symlink("/nonexistent-techrevati-target/x", tmp_path / "src" / "dangling")
    os.symlink("../.git/config", tmp_path / "src" / "git_config")
    return tmp_path


@pytest.fixture
def arg_policy(workspace: Path) -> PermissionPolicy:
    return PermissionPolicy(
        {
            "agent": RolePermissionConfig(
                role="agent", mode=M.FULL_ACCESS, allowed_tools=ARG_RULES
            ),
            "narrow": RolePermissionConfig(
                role="narrow",
                mode=M.FULL_ACCESS,
                allowed_tools=["http.get(url:https://api.example.com/v1/*)"],
            ),
        },
        workspace=workspace,
    )


def _allowed_check_detail(policy: PermissionPolicy, role: str, tool: str, args: object) -> str:
    """The detail of the (one) allowed_tools argument rule check in the explanation."""
    checks = [
        check
        for check in policy.explain(role, tool, args).checks
        if check.layer == "allowed_tools" and check.result != "decided"
    ]
    assert len(checks) == 1, checks
    return f"{checks[0].result}: {checks[0].detail}"


# shell ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("npm run test; rm -rf /", "unreadable: command 'npm run test; rm -rf /' holds the shell"),
        ("npm run test && rm -rf /", "holds the shell operator '&'"),
        ("npm run $(rm -rf /)", "holds the shell operator '$('"),
        ("npm run ${HOME}", "holds the shell operator '${'"),
        ("npm run `id`", "holds the shell operator '`'"),
        ("npm run test | sh", "holds the shell operator '|'"),
        ("npm run test > /etc/passwd", "holds the shell operator '>'"),
        ("npm run test < /etc/passwd", "holds the shell operator '<'"),
        ("npm run test\nrm -rf /", "holds the shell operator '\\n'"),
        ("npm run test\rrm -rf /", "holds the shell operator '\\r'"),
        ("npm run test\x00", "holds a control character"),
        ("npm run test\x1b[2J", "holds a control character"),
        # Operators inside quotes are refused too: the command is not read at all.
        ('npm run "test; rm -rf /"', "holds the shell operator ';'"),
        ("npm run 'a|b'", "holds the shell operator '|'"),
        ("npm run 'unterminated", "cannot be split into words"),
        ("npm run test\\", "cannot be split into words"),
        # Words are compared after the shell's quote removal: one quoted word is one word.
        ("'npm run' test", "no_match: pattern 'npm run *' did not match"),
        ("npm run", "no_match: pattern 'npm run *' did not match command 'npm run'"),
        ("NPM run test", "no_match"),
        ("FOO=1 npm run test", "no_match"),
        ("npx run test", "no_match"),
        ("/usr/bin/npm run test", "no_match"),
    ],
)
def test_a_shell_command_that_is_not_only_npm_run_is_not_allowed(
    arg_policy: PermissionPolicy, command: str, why: str
) -> None:
    for args in (command, {"command": command}, {"cmd": command}):
        _assert_denied(arg_policy, "agent", "shell", args)
        assert arg_policy.decide("agent", "shell", args).rule == "not_in_allowed_tools"
        detail = _allowed_check_detail(arg_policy, "agent", "shell", args)
        assert why in detail, detail


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("npm run test", "['npm', 'run', 'test']"),
        ("npm  run test", "['npm', 'run', 'test']"),  # two spaces: the same words
        ("npm\trun test", "['npm', 'run', 'test']"),
        ("npm 'run' x", "['npm', 'run', 'x']"),  # the shell runs `npm run x`
        ('n"p"m run x', "['npm', 'run', 'x']"),
        ("npm run 'a b'", "['npm', 'run', 'a b']"),
        # A literal backslash-n (not a newline): the shell reads one word `testnrm`,
        # so this is still one npm invocation and nothing else.
        ("npm run test\\nrm -rf /", "['npm', 'run', 'testnrm', '-rf', '/']"),
    ],
)
def test_npm_run_commands_are_allowed_word_for_word(
    arg_policy: PermissionPolicy, command: str, words: str
) -> None:
    import shlex

    assert str(shlex.split(command)) == words  # what a POSIX shell runs
    for args in (command, {"command": command}):
        decision = arg_policy.decide("agent", "shell", args)
        assert decision.allowed, decision
        assert decision.rule == "allowed_tools:shell(npm run *)"


def test_two_spaces_between_words_are_allowed_explicitly(arg_policy: PermissionPolicy) -> None:
    decision = arg_policy.decide("agent", "shell", "npm  run test")
    assert decision.effect == "allow"
    assert "matches 'npm run *'" in decision.reason


def test_a_shell_call_with_more_than_the_one_argument_is_not_read(
    arg_policy: PermissionPolicy,
) -> None:
    args = {"command": "npm run test", "env": "PATH=/tmp/evil"}
    _assert_denied(arg_policy, "agent", "shell", args)
    assert "which has 2 arguments" in _allowed_check_detail(arg_policy, "agent", "shell", args)


# Found by this suite and fixed (was a strict xfail).
@pytest.mark.parametrize("name", ["input", "x", "code", "args"])
def test_the_single_argument_of_a_shell_call_is_read_as_a_command(
    arg_policy: PermissionPolicy, name: str
) -> None:
    _assert_denied(arg_policy, "agent", "shell", {name: "npm run test; rm -rf /"})


# paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "rule", "why"),
    [
        ("src/../../etc/passwd", "workspace:path", "outside the workspace"),
        ("/etc/passwd", "workspace:path", "is /etc/passwd, outside the workspace"),
        ("//etc/passwd", "workspace:path", "is /etc/passwd, outside the workspace"),
        ("src/etc_link/passwd", "workspace:path", "is /etc/passwd, outside the workspace"),
        ("src/dangling", "workspace:path", "/nonexistent-techrevati-target/x"),
        ("src/../secrets.txt", "not_in_allowed_tools", ""),
        ("src/git_config", "not_in_allowed_tools", ""),  # a link to .git/config, inside
        ("src\\..\\..\\etc\\passwd", "not_in_allowed_tools", ""),  # one odd file name
        ("src", "not_in_allowed_tools", ""),
        ("src/ok\x00.py", "not_in_allowed_tools", ""),
        ("", "not_in_allowed_tools", ""),
    ],
)
def test_a_path_outside_src_is_not_allowed(
    arg_policy: PermissionPolicy, path: str, rule: str, why: str
) -> None:
    args = {"path": path}
    reason = _assert_denied(arg_policy, "agent", "fs.write", args)
    assert arg_policy.decide("agent", "fs.write", args).rule == rule
    assert why in reason


def test_a_path_with_a_nul_says_it_cannot_be_read(arg_policy: PermissionPolicy) -> None:
    detail = _allowed_check_detail(arg_policy, "agent", "fs.write", {"path": "src/ok\x00.py"})
    assert detail.startswith("unreadable:")
    assert "holds a NUL" in detail


def test_a_symlink_out_of_the_workspace_is_resolved_before_matching(
    arg_policy: PermissionPolicy, workspace: Path
) -> None:
    assert (workspace / "src" / "etc_link").is_symlink()
    decision = arg_policy.decide("agent", "fs.write", {"path": "src/etc_link/passwd"})
    assert decision.effect == "deny"
    assert decision.layer == "workspace"


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("src/ok.py", "'src/ok.py'"),
        ("src/a/b/c.py", "'src/a/b/c.py'"),
        ("src/./new.py", "'src/new.py'"),
        ("src/a/../b.py", "'src/b.py'"),
    ],
)
def test_paths_inside_src_are_allowed(arg_policy: PermissionPolicy, path: str, shown: str) -> None:
    decision = arg_policy.decide("agent", "fs.write", {"path": path})
    assert decision.allowed, decision
    assert decision.rule == "allowed_tools:fs.write(path:src/**)"
    assert f"(as {shown})" in decision.reason


def test_an_absolute_path_inside_the_workspace_is_matched_relative_to_it(
    arg_policy: PermissionPolicy, workspace: Path
) -> None:
    path = str(workspace.resolve() / "src" / "ok.py")
    assert arg_policy.decide("agent", "fs.write", {"path": path}).allowed


def test_every_path_argument_must_be_inside_the_workspace(arg_policy: PermissionPolicy) -> None:
    args = {"path": "src/ok.py", "dest": "/etc/passwd"}
    _assert_denied(arg_policy, "agent", "fs.write", args)
    assert arg_policy.decide("agent", "fs.write", args).rule == "workspace:dest"


@pytest.mark.parametrize("args", ["src/ok.py", {"file": "src/ok.py"}, {"path": 5}, ["src/ok.py"]])
def test_a_path_rule_does_not_match_a_call_without_its_path(
    arg_policy: PermissionPolicy, args: object
) -> None:
    _assert_denied(arg_policy, "agent", "fs.write", args)


# URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://api.example.com.evil.com/x", "no_match"),
        ("https://api.example.com@evil.com/x", "holds user info"),
        ("https://user:pw@api.example.com/x", "holds user info"),
        ("https://evil.com/https://api.example.com/x", "no_match"),
        ("https://evil.com?https://api.example.com/x", "no_match"),
        ("https://evil.com#https://api.example.com/x", "no_match"),
        ("https://api.example.com%2eevil.com/", "percent-encoded host"),
        ("https://api.example.com:8443/v1", "no_match"),
        ("http://api.example.com/v1", "no_match"),
        ("https://api.ex\u0430mple.com/", "non-ASCII"),  # a Cyrillic a (U+0430)
        ("https://\uff41pi.example.com/", "non-ASCII"),  # a full-width 'a'
        ("https://api.example.com./v1", "no_match"),
        ("https://api.example.com\\@evil.com/", "holds user info"),
        ("https://api.example.com/v1\nHost: evil", "control character"),
        ("https://api.example.com/a b", "a space"),
        ("https://api.example.com/a/%2F/b", "encodes a slash"),
        ("https:api.example.com/v1", "no scheme or no host"),
        ("//api.example.com/v1", "no scheme or no host"),
        ("https://api.example.com:99999/v1", "malformed port"),
    ],
)
def test_a_url_off_the_allowed_host_is_not_allowed(
    arg_policy: PermissionPolicy, url: str, why: str
) -> None:
    args = {"url": url}
    _assert_denied(arg_policy, "agent", "http.get", args)
    assert arg_policy.decide("agent", "http.get", args).rule == "not_in_allowed_tools"
    detail = _allowed_check_detail(arg_policy, "agent", "http.get", args)
    assert why in detail, detail


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("https://API.EXAMPLE.COM/v1", "https://api.example.com/v1"),  # host case folds
        ("HTTPS://api.example.com/v1", "https://api.example.com/v1"),
        ("https://api.example.com:443/v1", "https://api.example.com/v1"),  # the default port
        ("https://api.example.com", "https://api.example.com/"),
        # The path is normalised: '..' stays on the host the rule grants.
        ("https://api.example.com/v1/../../admin", "https://api.example.com/admin"),
    ],
)
def test_a_url_on_the_allowed_host_is_allowed(
    arg_policy: PermissionPolicy, url: str, canonical: str
) -> None:
    decision = arg_policy.decide("agent", "http.get", {"url": url})
    assert decision.allowed, decision
    assert f"(as {canonical!r})" in decision.reason


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v1/../admin",
        "https://api.example.com/v1/x/../../admin",
        "https://api.example.com/v1/%2e%2e/admin",
        "https://api.example.com/v1/%2E%2E/admin",
        "https://api.example.com/v1/.%2e/admin",
        "https://api.example.com/v1/..%2fadmin",
        "https://api.example.com/v1",
        "https://api.example.com/v10/x",
    ],
)
def test_dot_segments_cannot_climb_out_of_a_url_path_prefix(
    arg_policy: PermissionPolicy, url: str
) -> None:
    _assert_denied(arg_policy, "narrow", "http.get", {"url": url})


def test_a_url_inside_the_path_prefix_is_allowed(arg_policy: PermissionPolicy) -> None:
    assert arg_policy.decide("narrow", "http.get", {"url": "https://api.example.com/v1/x"})


# deny rules over arguments that cannot be read ----------------------------------------


def _deny_arg_policy(workspace: Path | None) -> PermissionPolicy:
    return PermissionPolicy(
        {
            "agent": RolePermissionConfig(
                role="agent", mode=M.FULL_ACCESS, denied_tools=["fs.write(path:/etc/**)"]
            )
        },
        workspace=workspace,
    )


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (None, "the call's arguments were not given"),
        ({}, "the call gives no argument 'path'"),
        ({"path": 5}, "argument 'path' is a int, not a str"),
        ({"path": b"/etc/passwd"}, "argument 'path' is a bytes, not a str"),
        ({"path": None}, "argument 'path' is a NoneType, not a str"),
        ({"path": ""}, "it is empty"),
        ({"path": "/etc/pass\x00wd"}, "it holds a NUL"),
        ("/etc/passwd", "the call gives no argument 'path'"),
        (["/etc/passwd"], "the call's arguments are a list, not a mapping"),
    ],
)
@pytest.mark.parametrize("has_workspace", [False, True])
def test_a_deny_rule_denies_a_call_whose_arguments_cannot_be_read(
    tmp_path: Path, args: object, why: str, has_workspace: bool
) -> None:
    policy = _deny_arg_policy(tmp_path if has_workspace else None)
    decision = policy.decide("agent", "fs.write", args)
    assert decision.effect == "deny"
    assert decision.rule == "denied_tools:fs.write(path:/etc/**)"
    assert "it needs the call's arguments to decide" in decision.reason
    assert why in decision.reason, decision.reason
    if args is None:
        assert not policy.check("agent", "fs.write").allowed


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "///etc/passwd", "/etc/../etc/passwd", "/./etc/passwd", "/tmp/../etc/x"]
)
@pytest.mark.parametrize("has_workspace", [False, True])
def test_a_deny_rule_on_a_path_sees_through_its_spelling(
    tmp_path: Path, path: str, has_workspace: bool
) -> None:
    policy = _deny_arg_policy(tmp_path if has_workspace else None)
    decision = policy.decide("agent", "fs.write", {"path": path})
    assert decision.rule == "denied_tools:fs.write(path:/etc/**)", decision


def test_a_deny_rule_lets_a_readable_call_it_does_not_name_through(tmp_path: Path) -> None:
    decision = _deny_arg_policy(None).decide("agent", "fs.write", {"path": "/tmp/x"})
    assert decision.allowed
    assert decision.layer == "mode"


# Found by this suite and fixed (was a strict xfail).
def test_a_double_leading_slash_does_not_dodge_a_deny_rule_without_a_workspace() -> None:
    decision = _deny_arg_policy(None).decide("agent", "fs.write", {"path": "//etc/passwd"})
    assert decision.rule == "denied_tools:fs.write(path:/etc/**)", decision


def test_a_double_leading_slash_is_denied_with_a_workspace(tmp_path: Path) -> None:
    decision = _deny_arg_policy(tmp_path).decide("agent", "fs.write", {"path": "//etc/passwd"})
    assert decision.rule == "denied_tools:fs.write(path:/etc/**)"


# -- 4. properties ----------------------------------------------------------------

_ASCII_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:"
_CONTROL_CHARS = [chr(code) for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))]
_COMBINING = ["\u0301", "\u0308", "\u0327", "\u034f", "\u20dd", "\ufe0f", "\U000e0100"]
_PUNCTUATION = [
    *" /\\;|&$()[]{}*?!@#%~'\"`<>,=+^",
    "\u3002",
    "\uff0e",
    "\u2024",
    "\ufe52",
    "\uff0f",
    "\u2010",
    "\u2011",
    "\u3000",
    "\u00a0",
]
_NON_ASCII_LETTERS = list(
    "\u00e9\u00df\u0130\u0131\u017f\u212a\ufb00\u0430\u0435\u043e\u0455\u0456\uff41\uff33\u01c5\u03a3\u03c2"
)

NAME_CHARS = st.one_of(
    st.sampled_from(_ASCII_NAME_CHARS),
    st.sampled_from(_CONTROL_CHARS),
    st.sampled_from(FORMAT_CHARS),
    st.sampled_from(INVISIBLE_NOT_FORMAT),
    st.sampled_from(_COMBINING),
    st.sampled_from(_PUNCTUATION),
    st.sampled_from(_NON_ASCII_LETTERS),
    st.characters(),
)
NAMES = st.text(NAME_CHARS, max_size=24)

_DISGUISED_DOTS = [".", "\uff0e", "\u2024", "\ufe52"]
_LOOKALIKES = {"s": ["\u017f"], "k": ["\u212a"]}


@st.composite
def disguised_shell_names(draw: st.DrawFn) -> str:
    """``shell.<segment>`` spelt so that it normalises back to itself."""
    segment = draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", max_size=8))
    out: list[str] = []
    for char in f"shell.{segment}":
        if char == ".":
            spelt = draw(st.sampled_from(_DISGUISED_DOTS))
        else:
            forms = [char, char.upper(), chr(ord(char) + 0xFEE0), *_LOOKALIKES.get(char, [])]
            spelt = draw(st.sampled_from(forms))
        out.append(spelt)
        if draw(st.booleans()):
            out.append(draw(st.sampled_from(FORMAT_CHARS)))
    pad = draw(st.sampled_from(["", " ", "\t", "\n", "\u3000", "\x0b", "\u200b"]))
    return pad + "".join(out) + pad


SHELL_NAME = re.compile(r"shell\.[a-z0-9_\-]*")

_OPEN = PermissionPolicy.from_configs(
    [
        RolePermissionConfig(role="star", mode=M.FULL_ACCESS, allowed_tools=["**"]),
        RolePermissionConfig(role="open", mode=M.FULL_ACCESS),
        RolePermissionConfig(role="deny", mode=M.FULL_ACCESS, denied_tools=["shell.*"]),
    ]
)


@HYPOTHESIS
@given(name=NAMES)
def test_no_name_outside_the_grammar_is_ever_allowed(name: str) -> None:
    normal = normalize_permission_name(name)
    inside = GRAMMAR.fullmatch(normal) is not None
    for role in ("star", "open"):
        decision = _OPEN.decide(role, name)
        assert decision.reason
        if inside:
            assert decision.allowed, (name, decision)
        else:
            assert not decision.allowed, (name, normal, decision)
            assert decision.rule == "invalid_tool"
            assert not _OPEN.check(role, name).allowed


@HYPOTHESIS
@given(name=st.one_of(disguised_shell_names(), NAMES, NAMES.map(lambda text: f"shell.{text}")))
def test_a_deny_glob_denies_every_name_that_normalises_into_it(name: str) -> None:
    normal = normalize_permission_name(name)
    decision = _OPEN.decide("deny", name)
    if SHELL_NAME.fullmatch(normal):
        assert decision.effect == "deny", (name, decision)
        assert decision.rule == "denied_tools:shell.*"
    elif GRAMMAR.fullmatch(normal) is None:
        assert decision.rule == "invalid_tool", (name, decision)
    else:
        assert decision.allowed, (name, decision)
    assert decision == _OPEN.explain("deny", name).decision


@HYPOTHESIS
@given(name=disguised_shell_names())
def test_the_disguises_are_disguises_of_a_denied_name(name: str) -> None:
    assert SHELL_NAME.fullmatch(normalize_permission_name(name)), repr(name)
    assert not PermissionEnforcer(_OPEN).is_allowed("deny", name)


# -- 5. explain -------------------------------------------------------------------


def _explain_policy(workspace: Path) -> PermissionPolicy:
    return PermissionPolicy(
        {
            "agent": RolePermissionConfig(
                role="agent",
                mode=M.FULL_ACCESS,
                allowed_tools=ARG_RULES,
                denied_tools=["shell.*", "fs.write(path:/etc/**)"],
            )
        },
        workspace=workspace,
    )


def _assert_last_check_is_the_decision(
    policy: PermissionPolicy, tool: str, args: object
) -> PermissionDecision:
    explanation = policy.explain("agent", tool, args)
    decision = explanation.decision
    assert decision == policy.decide("agent", tool, args)
    last = explanation.checks[-1]
    assert last.result == "decided"
    assert last.layer == decision.layer
    assert last.entry == decision.rule
    assert last.detail == f"{decision.effect}: {decision.reason}"
    assert all(check.result != "decided" for check in explanation.checks[:-1])
    assert str(explanation).splitlines()[0] == f"{decision.effect}: {decision.reason}"
    return decision


def _check(policy: PermissionPolicy, tool: str, args: object, layer: str, entry: str) -> str:
    found = [
        check
        for check in policy.explain("agent", tool, args).checks
        if check.layer == layer and check.entry == entry
    ]
    assert len(found) == 1, found
    return f"{found[0].result}: {found[0].detail}"


def test_explain_says_why_a_name_rule_did_not_match(tmp_path: Path) -> None:
    policy = _explain_policy(tmp_path)
    got = _check(policy, "shell", "npm run x", "denied_tools", "shell.*")
    assert got == "no_match: 'shell' does not match 'shell.*'"
    _assert_last_check_is_the_decision(policy, "shell", "npm run x")


def test_explain_says_a_name_rule_matched(tmp_path: Path) -> None:
    policy = _explain_policy(tmp_path)
    got = _check(policy, "Shell.Exec", None, "denied_tools", "shell.*")
    assert got == "match: 'shell.exec' matches 'shell.*'"
    decision = _assert_last_check_is_the_decision(policy, "Shell.Exec", None)
    assert decision.rule == "denied_tools:shell.*"


def test_explain_names_the_pattern_and_the_command_that_did_not_match(tmp_path: Path) -> None:
    policy = _explain_policy(tmp_path)
    got = _check(policy, "shell", "npm test", "allowed_tools", "shell(npm run *)")
    assert got == (
        "no_match: pattern 'npm run *' did not match command 'npm test' (words ['npm', 'test'])"
    )
    decision = _assert_last_check_is_the_decision(policy, "shell", "npm test")
    assert decision.rule == "not_in_allowed_tools"


def test_explain_says_a_command_rule_matched(tmp_path: Path) -> None:
    policy = _explain_policy(tmp_path)
    got = _check(policy, "shell", "npm run lint", "allowed_tools", "shell(npm run *)")
    assert got == "match: command 'npm run lint' matches 'npm run *'"
    assert _assert_last_check_is_the_decision(policy, "shell", "npm run lint").allowed


def test_explain_says_why_a_command_could_not_be_read(tmp_path: Path) -> None:
    policy = _explain_policy(tmp_path)
    got = _check(policy, "shell", "npm run x; id", "allowed_tools", "shell(npm run *)")
    assert got == "unreadable: command 'npm run x; id' holds the shell operator ';'"
    _assert_last_check_is_the_decision(policy, "shell", "npm run x; id")


def test_explain_names_the_path_pattern_and_the_resolved_path(tmp_path: Path) -> None:
    policy = _explain_policy(tmp_path)
    args = {"path": "src/../secrets.txt"}
    deny = _check(policy, "fs.write", args, "denied_tools", "fs.write(path:/etc/**)")
    assert deny == (
        "no_match: pattern '/etc/**' did not match path 'src/../secrets.txt' (as 'secrets.txt')"
    )
    allow = _check(policy, "fs.write", args, "allowed_tools", "fs.write(path:src/**)")
    assert allow == (
        "no_match: pattern 'src/**' did not match path 'src/../secrets.txt' (as 'secrets.txt')"
    )
    _assert_last_check_is_the_decision(policy, "fs.write", args)


def test_explain_says_a_path_rule_matched(tmp_path: Path) -> None:
    policy = _explain_policy(tmp_path)
    args = {"path": "src/a.py"}
    got = _check(policy, "fs.write", args, "allowed_tools", "fs.write(path:src/**)")
    assert got == "match: path 'src/a.py' (as 'src/a.py') matches 'src/**'"
    assert _assert_last_check_is_the_decision(policy, "fs.write", args).allowed


def test_explain_shows_the_workspace_check_and_the_deny_rule_that_matched(
    tmp_path: Path,
) -> None:
    policy = _explain_policy(tmp_path)
    outside = {"path": "/var/x"}
    got = _check(policy, "fs.write", outside, "workspace", "path")
    assert got == "match: '/var/x' resolves to '/var/x'"
    assert _assert_last_check_is_the_decision(policy, "fs.write", outside).layer == "workspace"
    etc = {"path": "/etc/passwd"}
    got = _check(policy, "fs.write", etc, "denied_tools", "fs.write(path:/etc/**)")
    assert got == "match: path '/etc/passwd' (as '/etc/passwd') matches '/etc/**'"
    assert _assert_last_check_is_the_decision(policy, "fs.write", etc).layer == "denied_tools"


def test_explain_names_the_url_pattern_and_the_canonical_url(tmp_path: Path) -> None:
    policy = _explain_policy(tmp_path)
    entry = "http.get(url:https://api.example.com/*)"
    miss = {"url": "https://API.example.com.evil.com/x"}
    assert _check(policy, "http.get", miss, "allowed_tools", entry) == (
        "no_match: pattern 'https://api.example.com/*' did not match URL "
        "'https://API.example.com.evil.com/x' (as 'https://api.example.com.evil.com/x')"
    )
    _assert_last_check_is_the_decision(policy, "http.get", miss)
    hit = {"url": "https://API.example.com/x"}
    assert _check(policy, "http.get", hit, "allowed_tools", entry) == (
        "match: URL 'https://API.example.com/x' (as 'https://api.example.com/x') "
        "matches 'https://api.example.com/*'"
    )
    assert _assert_last_check_is_the_decision(policy, "http.get", hit).allowed


def test_explain_of_a_name_outside_the_grammar_is_the_decision_alone(tmp_path: Path) -> None:
    policy = _explain_policy(tmp_path)
    explanation = policy.explain("agent", "shell.exec\x00")
    assert len(explanation.checks) == 1
    assert "U+0000" in explanation.checks[0].detail
    _assert_last_check_is_the_decision(policy, "shell.exec\x00", None)


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("shell", "npm run a"),
        ("shell", {"command": "npm run a | sh"}),
        ("fs.write", {"path": "src/x"}),
        ("fs.write", {"path": "/etc/shadow"}),
        ("fs.write", None),
        ("http.get", {"url": "https://api.example.com/"}),
        ("shell.exec", None),
        ("other", {"k": "v"}),
    ],
)
def test_explain_always_ends_with_the_decision(
    tmp_path: Path, tool: str, args: Mapping[str, object] | str | None
) -> None:
    _assert_last_check_is_the_decision(_explain_policy(tmp_path), tool, args)
