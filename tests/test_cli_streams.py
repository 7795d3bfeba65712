"""What AI coding CLIs report as they run: the parsers (on recorded-shape transcripts and
bad input), Usage, the argv edits, flag refusals, and the fake `claude`/`codex` executables
run as real processes with their output fed through the parsers."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinytown_nb.core.cli_streams import (
    MAX_LINE,
    MAX_PARSE,
    MAX_TEXT_LINES,
    SHORT,
    ClaudeStream,
    CodexStream,
    PlainStream,
    StreamParser,
    Usage,
    rejected_flags,
    stream_command,
    tool_summary,
)
from tinytown_nb.core.config import CLI_PRESETS
from tinytown_nb.core.errors import ConfigError
from tinytown_nb.core.models import TaskState

FAKES = Path(__file__).parent / "fakes"
TRANSCRIPTS = FAKES / "transcripts"


def parse(parser: StreamParser, lines) -> list[str]:
    shown = []
    for line in lines:
        shown += parser.feed(line)
    return shown


def transcript(name: str) -> list[str]:
    return (TRANSCRIPTS / f"{name}.jsonl").read_text().splitlines(keepends=True)


def event(**obj) -> str:
    return json.dumps(obj)


# -- claude ------------------------------------------------------------------------------


def test_claude_success_transcript_shows_text_tools_and_result():
    parser = ClaudeStream()
    assert parse(parser, transcript("claude_success")) == [
        "· claude started (model claude-sonnet-4-5-20250929)",
        "I'll look at the project layout first.",
        "→ Bash: ls -la",
        "→ Edit: src/app.py",
        "✘ Edit failed: String to replace not found in file.",
        "→ Read: /home/dev/town/src/app.py",
        "→ Edit: src/app.py",
        "Fixed the typo in `greet`:",
        "",
        "- `nme` → `name` in src/app.py",
        "- the tests pass again",
        "✔ result: Fixed the typo in `greet`:",
    ]
    out = parser.finish()
    assert out.result == "Fixed the typo in `greet`:\n\n- `nme` → `name` in src/app.py\n- the tests pass again"
    assert (out.is_error, out.error, out.saw_stream) == (False, None, True)
    assert out.usage == Usage(input_tokens=29, output_tokens=401, cache_creation_tokens=6087,
                              cache_read_tokens=82750, cost_usd=0.0738, turns=6,
                              model="claude-sonnet-4-5-20250929")
    assert parser.session_id == "4f1c2a8e-5b6d-4e7f-9a0b-1c2d3e4f5a6b"


def test_claude_error_subtype_is_an_error_even_when_is_error_is_false():
    parser = ClaudeStream()
    shown = parse(parser, transcript("claude_error"))
    assert shown == [
        "· claude started (model claude-opus-4-1-20250805)",
        "Let me run the test suite.",
        "→ Bash: pytest -q tests/test_app.py && echo ok",
        "✘ Bash failed: Exit code 1",
        "⟳ API call retried (attempt 1): Overloaded",  # rate_limit_event: known, not shown
        "✘ error: claude stopped at its maximum number of turns (error_max_turns)",
    ]
    out = parser.finish()
    assert out.is_error and out.result is None
    assert out.error == "claude stopped at its maximum number of turns (error_max_turns)"
    assert out.usage == Usage(3050, 512, 1200, 400, cost_usd=0.2154, turns=3,
                              model="claude-opus-4-1-20250805")


def test_claude_api_error_comes_as_success_with_is_error_and_the_message_in_result():
    parser = ClaudeStream()
    shown = parser.feed(event(type="result", subtype="success", is_error=True,
                              result="API Error: 401 invalid x-api-key\nplease log in",
                              total_cost_usd=0, num_turns=1, usage={}))
    assert shown == ["✘ error: API Error: 401 invalid x-api-key"]
    out = parser.finish()
    assert (out.is_error, out.result) == (True, None)
    assert out.error == "API Error: 401 invalid x-api-key\nplease log in"
    assert out.usage == Usage(cost_usd=0.0, turns=1)


def test_claude_error_result_takes_its_message_from_errors():
    parser = ClaudeStream()
    parser.feed(event(type="result", subtype="error_during_execution", is_error=True,
                      errors=["No conversation found", {"code": 7}]))
    assert parser.finish().error == 'No conversation found; {"code": 7}'


def test_claude_without_a_result_event_reports_nothing_but_saw_the_stream():
    parser = ClaudeStream()
    parse(parser, transcript("claude_success")[:4])  # the CLI died mid-run
    assert parser.finish() == type(parser.finish())(saw_stream=True)


def test_claude_output_format_json_single_object_is_parsed():
    parser = ClaudeStream()
    parser.feed(event(type="result", subtype="success", is_error=False, result="4",
                      modelUsage={"claude-haiku-4-5": {}}, usage={"input_tokens": 3, "output_tokens": 1}))
    out = parser.finish()
    assert (out.result, out.usage.model, out.usage.total_tokens) == ("4", "claude-haiku-4-5", 4)


def test_claude_hides_thinking_and_successful_tool_output_and_partial_events():
    parser = ClaudeStream()
    shown = parse(parser, [
        event(type="assistant", message={"content": [{"type": "thinking", "thinking": "hmm"}]}),
        event(type="user", message={"content": [{"type": "tool_result", "tool_use_id": "x",
                                                 "content": "lots of output"}]}),
        event(type="user", message={"content": "the prompt, echoed"}),
        event(type="stream_event", event={"type": "content_block_delta"}),
        event(type="system", subtype="hook_response"),
    ])
    assert shown == [] and parser.saw_stream


def test_claude_long_text_is_capped_and_lines_cut():
    parser = ClaudeStream()
    text = "\n".join(f"line {i}" for i in range(MAX_TEXT_LINES + 50)) + "\n" + "x" * 5000
    shown = parser.feed(event(type="assistant", message={"content": [{"type": "text", "text": text}]}))
    assert len(shown) == MAX_TEXT_LINES + 1
    assert shown[-1] == f"… ({50 + 1} more lines)"
    long = parser.feed(event(type="assistant", message={"content": [{"type": "text", "text": "y" * 5000}]}))
    assert len(long[0]) == MAX_LINE and long[0].endswith("…")


def test_tool_summary_is_one_short_line():
    assert tool_summary("Bash", {"command": "echo 'a\nb'   |  wc -l"}) == "→ Bash: echo 'a b' | wc -l"
    assert tool_summary("Grep", {"pattern": "TODO", "path": "src"}) == "→ Grep: TODO"
    assert tool_summary("TodoWrite", {"todos": [{}, {}, {}]}) == "→ TodoWrite: 3 items"
    assert tool_summary("Mystery", {"n": 3}) == "→ Mystery"
    assert tool_summary("Odd", "not a dict") == "→ Odd"
    cut = tool_summary("Bash", {"command": "x" * 1000})
    assert len(cut) == SHORT and cut.endswith("…")


# -- codex -------------------------------------------------------------------------------


def test_codex_success_transcript_with_commands_and_two_turns():
    parser = CodexStream()
    assert parse(parser, transcript("codex_success")) == [
        "· Inspecting the repository layout",
        "$ ls -la",
        "↳ exit 0",
        "· to-do: 0/2 done",
        "✎ update src/app.py, add tests/test_greet.py",
        "· to-do: 1/2 done",
        "$ pytest -q",
        "↳ exit 1",
        "One test still fails; looking closer.",
        "✔ result: One test still fails; looking closer.",
        "→ docs.search: pytest fixtures",
        "! model rerouted: gpt-5-codex -> gpt-5",
        "All tests pass now.",
        "Changed src/app.py and added tests/test_greet.py.",
        "✔ result: All tests pass now.",
    ]
    out = parser.finish()
    assert out.result == "All tests pass now.\nChanged src/app.py and added tests/test_greet.py."
    assert (out.is_error, out.error, out.saw_stream) == (False, None, True)
    # codex reports the thread's running total in each turn.completed: the last one counts
    assert out.usage == Usage(input_tokens=51020, output_tokens=301, cache_read_tokens=49920,
                              cost_usd=None, turns=2, model=None)
    assert parser.thread_id == "0199a213-81c0-7800-8aa1-bbab2a035a53"


def test_codex_failure_transcript():
    parser = CodexStream(model="gpt-5.4-mini")
    shown = parse(parser, transcript("codex_failure"))
    assert shown[-1] == ("✘ error: stream disconnected before completion: Transport error: "
                         "error decoding response body")
    assert "! Reconnecting... 1/5" in shown
    out = parser.finish()
    assert out.is_error and out.result is None and out.usage is None
    assert out.error == "stream disconnected before completion: Transport error: error decoding response body"


def test_codex_retried_error_then_completed_turn_is_a_success():
    parser = CodexStream(model="gpt-5.4-mini")
    parse(parser, [event(type="turn.started"), event(type="error", message="Reconnecting... 1/5"),
                   event(type="item.completed", item={"id": "i", "type": "agent_message", "text": "ok"}),
                   event(type="turn.completed", usage={"input_tokens": 5, "cached_input_tokens": 2,
                                                       "output_tokens": 1})])
    out = parser.finish()
    assert (out.is_error, out.result) == (False, "ok")
    assert out.usage == Usage(5, 1, 0, 2, cost_usd=None, turns=1, model="gpt-5.4-mini")


def test_codex_error_event_with_no_completed_turn_is_a_failure():
    parser = CodexStream()
    parse(parser, [event(type="turn.started"),
                   event(type="item.completed", item={"id": "i", "type": "agent_message", "text": "partial"}),
                   event(type="error", message="quota exceeded")])
    out = parser.finish()
    assert (out.is_error, out.error, out.result) == (True, "quota exceeded", None)


def test_codex_command_shown_with_its_exit_when_other_lines_came_between():
    parser = CodexStream()
    started = event(type="item.started", item={"id": "c", "type": "command_execution",
                                               "command": "/bin/bash -lc 'make -j2'", "status": "in_progress"})
    done = event(type="item.completed", item={"id": "c", "type": "command_execution", "command": "make",
                                              "aggregated_output": "", "exit_code": None, "status": "declined"})
    assert parse(parser, [started, "stray text", done]) == ["$ make -j2", "stray text", "$ make ↳ declined"]


def test_codex_other_items():
    parser = CodexStream()
    shown = parse(parser, [
        event(type="item.started", item={"id": "w", "type": "web_search", "query": "redis streams"}),
        event(type="item.completed", item={"id": "m", "type": "mcp_tool_call", "server": "gh", "tool": "pr",
                                           "arguments": {}, "error": {"message": "403"}, "status": "failed"}),
        event(type="item.completed", item={"id": "f", "type": "file_change", "status": "failed",
                                           "changes": [{"path": "a.py", "kind": "delete"}]}),
        event(type="item.completed", item={"id": "n", "type": "brand_new_kind"}),
        event(type="item.plan.delta", item_id="p", delta="x"),
    ])
    assert shown == ["→ web search: redis streams", "✘ gh.pr failed: 403", "✘ patch failed: delete a.py",
                     "· brand_new_kind"]


# -- bad input ---------------------------------------------------------------------------

MALFORMED = [
    "plain progress text",
    "{not json",
    "[1, 2, 3]",
    "42",
    '"a string"',
    "null",
    '{"no_type": 1}',
    '{"type": 7}',
    '{"type": "totally_unknown", "x": 1}',
    '{"type": "assistant", "message": "should be an object"}',
    '{"type": "assistant", "message": {"content": [{"type": "text", "text": 5}]}}',
    '{"type": "assistant", "message": {"content": [{"type": "tool_use", "input": {}}]}}',
    '{"type": "assistant", "message": {"content": ["not a block"]}}',
    '{"type": "result", "is_error": "yes"}',
    '{"type": "result", "subtype": ["x"]}',
    '{"type": "item.completed"}',
    '{"type": "item.completed", "item": {"id": "i", "type": "command_execution", "command": 5}}',
    '{"type": "item.completed", "item": {"id": "i", "type": "agent_message"}}',
    '{"type": "item.completed", "item": {"id": "i", "type": "file_change", "changes": "a.py"}}',
    '{"type": "turn.failed", "error": "not an object"}',
    '{"type": "error", "message": {"nested": true}}',
    '{"a":' * 100_000,  # deeper than json can parse
]


@pytest.mark.parametrize("cls", [ClaudeStream, CodexStream])
def test_malformed_lines_come_back_as_text_and_teach_nothing(cls):
    parser = cls()
    for line in MALFORMED:
        shown = parser.feed(line)
        assert shown == [line[:MAX_LINE - 1] + "…" if len(line) > MAX_LINE else line], line[:80]
    out = parser.finish()
    assert out == type(out)()  # nothing learned: no result, no error, no usage, no stream


@pytest.mark.parametrize("cls", [ClaudeStream, CodexStream, PlainStream])
def test_huge_lines_invalid_text_and_bytes_never_raise_and_stay_storable(cls):
    parser = cls()
    huge = '{"type": "result", "result": "' + "x" * MAX_PARSE + '"}'
    shown = parser.feed(huge)
    assert shown == [huge[:MAX_LINE - 1] + "…"]  # too long to parse: shown cut
    inputs = ["bad \ud800 surrogate", b"\xff\xfe broken utf-8\n", "ctrl \x1b[31m red \x00",
              event(type="assistant", message={"content": [{"type": "text", "text": "\ud800!"}]}),
              event(type="item.completed", item={"id": "i", "type": "agent_message", "text": "\udfff!"}),
              "\r\n", ""]
    for line in inputs:
        for text in parser.feed(line):
            text.encode("utf-8")  # storable in Redis as UTF-8
            assert "\x00" not in text and "\x1b" not in text
    finish = parser.finish()
    if finish.result is not None:
        finish.result.encode("utf-8")


def test_plain_stream_passes_lines_through():
    parser = PlainStream()
    assert parse(parser, ["Compiling…\n", "", '{"type": "result", "result": "x"}']) == [
        "Compiling…", "", '{"type": "result", "result": "x"}']
    out = parser.finish()
    assert (out.result, out.is_error, out.usage, out.saw_stream) == (None, False, None, True)
    assert parser.feed("two\nlines\r\n") == ["two", "lines"]  # a chunk, not one line


# -- usage -------------------------------------------------------------------------------


def test_usage_add_accumulates():
    a = Usage(10, 2, 1, 5, cost_usd=0.5, turns=2, model="m1")
    b = Usage(1, 1, 0, 0, cost_usd=None, turns=None, model=None)
    c = Usage(0, 0, 0, 1, cost_usd=0.25, turns=1, model="m2")
    assert a + b == Usage(11, 3, 1, 5, cost_usd=0.5, turns=2, model="m1")
    assert a + b + c == Usage(11, 3, 1, 6, cost_usd=0.75, turns=3, model="m2")
    assert Usage() + Usage() == Usage()  # unknown cost and turns stay unknown
    assert sum([a, c], Usage()) == a + c
    with pytest.raises(TypeError):
        a + 1  # noqa: B018


def test_usage_fields_round_trip_and_tolerant_read():
    u = Usage(1200, 340, 7, 9000, cost_usd=0.1 + 0.2, turns=4, model="claude-sonnet-4-5")
    fields = u.to_fields()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    assert Usage.from_fields(fields) == u
    assert Usage.from_fields(Usage().to_fields()) == Usage()
    assert Usage.from_fields({k.encode(): v.encode() for k, v in fields.items()}) == u  # redis bytes
    bad = {"input_tokens": "-5", "output_tokens": "1.5", "cache_creation_tokens": "",
           "cache_read_tokens": str(2**70), "cost_usd": "inf", "turns": "many", "model": ""}
    assert Usage.from_fields(bad) == Usage()
    assert Usage.from_fields({"cost_usd": "-1"}).cost_usd is None
    assert Usage.from_fields({"cost_usd": "NaN", 3: 4, "turns": b"\xff"}) == Usage()
    assert Usage.from_fields(None) == Usage()  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs, field", [
    ({"input_tokens": -1}, "input_tokens"),
    ({"output_tokens": True}, "output_tokens"),
    ({"cache_read_tokens": "12"}, "cache_read_tokens"),
    ({"cache_creation_tokens": 1.0}, "cache_creation_tokens"),
    ({"input_tokens": 2**64}, "input_tokens"),
    ({"turns": -2}, "turns"),
    ({"cost_usd": math.nan}, "cost_usd"),
    ({"cost_usd": math.inf}, "cost_usd"),
    ({"cost_usd": -0.01}, "cost_usd"),
    ({"cost_usd": True}, "cost_usd"),
    ({"cost_usd": "0.42"}, "cost_usd"),
    ({"model": 3}, "model"),
])
def test_usage_validated_refuses_bad_values_in_one_line(kwargs, field):
    with pytest.raises(ConfigError) as info:
        Usage.validated(**kwargs)
    message = str(info.value)
    assert field in message and "Give" in message and "\n" not in message


def test_usage_validated_accepts_good_values():
    assert Usage.validated(3, 4, 0, 1, cost_usd=0, turns=None, model="m") == Usage(3, 4, 0, 1, 0.0, None, "m")
    assert isinstance(Usage.validated(cost_usd=1).cost_usd, float)


# -- argv edits and refusals -------------------------------------------------------------


def preset(name: str) -> list[str]:
    return shlex.split(CLI_PRESETS[name])


def test_stream_command_claude_preset():
    argv = preset("claude")
    original = list(argv)
    new, make = stream_command("claude", argv)
    assert new == ["claude", "--print", "--output-format", "stream-json", "--verbose",
                   "--dangerously-skip-permissions"]
    assert argv == original and make is ClaudeStream
    assert stream_command("claude", new) == (new, ClaudeStream)  # idempotent
    assert stream_command("claude", ["claude", "-p"])[0] == [
        "claude", "-p", "--output-format", "stream-json", "--verbose"]


def test_stream_command_claude_keeps_a_chosen_output_format():
    assert stream_command("claude", ["claude", "-p", "--output-format", "json"]) == (
        ["claude", "-p", "--output-format", "json"], ClaudeStream)
    assert stream_command("claude", ["claude", "-p", "--output-format=text"]) == (
        ["claude", "-p", "--output-format=text"], PlainStream)
    assert stream_command("claude", ["claude", "--print", "--output-format", "stream-json"])[0] == [
        "claude", "--print", "--output-format", "stream-json", "--verbose"]
    assert stream_command("claude", ["claude", "chat"]) == (["claude", "chat"], PlainStream)


@pytest.mark.parametrize("name", ["codex", "codex-mini"])
def test_stream_command_codex_presets(name):
    argv = preset(name)
    original = list(argv)
    new, make = stream_command(name, argv)
    assert new == ["codex", "exec", "--json", *original[2:]]
    assert argv == original
    assert stream_command(name, new)[0] == new  # idempotent
    parser = make()
    assert isinstance(parser, CodexStream)
    assert parser.model == ("gpt-5.4-mini" if name == "codex-mini" else None)
    assert stream_command(name, ["/opt/bin/codex", "exec", "-"])[0] == ["/opt/bin/codex", "exec", "--json", "-"]


def test_stream_command_leaves_other_clis_alone():
    for name, argv in [("aider", preset("aider")), ("gemini", preset("gemini")),
                       ("codex", ["codex", "--dangerously-bypass-approvals-and-sandbox"]),
                       ("my-agent --print", ["my-agent", "--print"]), ("claude", [])]:
        original = list(argv)
        new, make = stream_command(name, argv)
        assert (new, make) == (original, PlainStream)
        assert new is not argv and argv == original


@pytest.mark.parametrize("stderr", [
    "error: unknown option '--output-format'",
    "error: unexpected argument '--json' found\n\nUsage: codex exec [OPTIONS] [PROMPT]",
    "gemini: unrecognized arguments: --json",
    "Usage: tool [options]",
    "error: option '--output-format <format>' argument 'stream-json' is invalid.",
])
def test_rejected_flags_recognises_usage_errors(stderr):
    assert rejected_flags(2, 0.3, False, stderr)


@pytest.mark.parametrize("returncode, elapsed, saw_stream, stderr", [
    (0, 0.3, False, "Usage: whatever"),  # it worked
    (-9, 0.3, False, "Usage: whatever"),  # killed, not refused
    (2, 60.0, False, "error: unknown option"),  # ran a while: a real failure
    (2, 0.3, True, "error: unknown option"),  # it did stream
    (1, 0.3, False, "Error: Invalid API key · Please run /login"),
    (1, 0.3, False, ""),
])
def test_rejected_flags_false_for_other_failures(returncode, elapsed, saw_stream, stderr):
    assert not rejected_flags(returncode, elapsed, saw_stream, stderr)


# -- the fake CLIs, as real processes ----------------------------------------------------


def fake_env(**extra: str) -> dict[str, str]:
    bin_dir = os.path.dirname(sys.executable)  # ttnb lives next to this Python
    env = dict(os.environ, PATH=f"{FAKES}{os.pathsep}{bin_dir}{os.pathsep}{os.environ['PATH']}",
               FAKE_CLI_DELAY="0")
    env.update(extra)
    return env


def run_fake(argv: list[str], prompt: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=prompt, capture_output=True, text=True, timeout=30,
                          env=fake_env(**env))


def streamed(name: str, prompt: str, **env: str):
    """Run a preset with its stream flags; (process, shown lines, outcome)."""
    argv, make = stream_command(name, preset(name))
    done = run_fake(argv, prompt, **env)
    parser = make()
    shown = parse(parser, done.stdout.splitlines(keepends=True))
    return done, shown, parser.finish()


@pytest.mark.parametrize("name", ["claude", "codex"])
def test_fake_version(name):
    done = run_fake([name, "--version"], "")
    assert done.returncode == 0 and "fake" in done.stdout and done.stdout.count("\n") == 1


def test_fake_claude_stream_with_result_cost_and_tokens():
    done, shown, out = streamed("claude", "Fix the greeting\nFAKE-RESULT: Greeting fixed\n"
                                          "FAKE-COST: 0.42\nFAKE-TOKENS: 1200/340\n")
    assert done.returncode == 0, done.stderr
    assert shown[0].startswith("· claude started (model ") and "→ Bash: ls" in shown
    assert shown[-1] == "✔ result: Greeting fixed"
    assert not any(line.lstrip().startswith("{") for line in shown)
    assert (out.result, out.is_error, out.saw_stream) == ("Greeting fixed", False, True)
    assert (out.usage.cost_usd, out.usage.input_tokens, out.usage.output_tokens) == (0.42, 1200, 340)
    assert out.usage.model and out.usage.turns


def test_fake_codex_stream_with_result_and_tokens():
    done, shown, out = streamed("codex-mini", "Fix it\nFAKE-RESULT: Fixed\nFAKE-TOKENS: 900/80\nFAKE-COST: 9\n")
    assert done.returncode == 0, done.stderr
    assert shown == ["· Looking at the repository", "$ ls", "↳ exit 0", "Fixed", "✔ result: Fixed"]
    assert (out.result, out.is_error) == ("Fixed", False)
    assert out.usage == Usage(900, 80, cost_usd=None, turns=1, model="gpt-5.4-mini")


@pytest.mark.parametrize("name, stdout", [("claude", "Done: Say hi\n"), ("codex", "Done: Say hi\n")])
def test_fakes_without_flags_print_plain_text(name, stdout):
    done = run_fake(preset(name), "Say hi\n")
    assert (done.returncode, done.stdout) == (0, stdout)
    parser = PlainStream()
    assert parse(parser, done.stdout.splitlines()) == ["Done: Say hi"]


def test_fake_claude_json_output_is_one_result_object():
    done = run_fake(["claude", "-p", "--output-format", "json"], "FAKE-RESULT: 4")
    assert done.stdout.count("\n") == 1
    parser = ClaudeStream()
    parser.feed(done.stdout)
    assert parser.finish().result == "4"


def test_fake_claude_refuses_stream_json_without_verbose():
    done = run_fake(["claude", "--print", "--output-format", "stream-json"], "hi")
    assert done.returncode == 1 and "requires --verbose" in done.stderr and done.stdout == ""


@pytest.mark.parametrize("name", ["claude", "codex"])
def test_fake_error(name):
    done, shown, out = streamed(name, "Try\nFAKE-ERROR: disk on fire\n")
    assert done.returncode == 1
    assert shown[-1] == "✘ error: disk on fire"
    assert (out.is_error, out.error, out.result) == (True, "disk on fire", None)
    plain = run_fake(preset(name), "Try\nFAKE-ERROR\n")
    assert plain.returncode == 1 and "FAKE-ERROR" in plain.stderr and plain.stdout == ""


@pytest.mark.parametrize("name", ["claude", "codex"])
def test_fake_malformed_line_is_shown_as_text_and_the_run_still_parses(name):
    done, shown, out = streamed(name, "Go FAKE-MALFORMED FAKE-RESULT: fine")
    assert "}}} this line is not JSON {{{" in shown
    assert (out.result, out.is_error, done.returncode) == ("fine", False, 0)


@pytest.mark.parametrize("name", ["claude", "codex"])
def test_fake_exit_status(name):
    done, _, out = streamed(name, "Go\nFAKE-EXIT: 3\n")
    assert done.returncode == 3 and out.result == "Done: Go"


@pytest.mark.parametrize("name", ["claude", "codex"])
def test_fake_sleep_waits_before_the_result(name):
    started = time.monotonic()
    done, _, out = streamed(name, "Go FAKE-SLEEP: 0.3")
    assert time.monotonic() - started >= 0.3 and out.result == "Done: Go FAKE-SLEEP: 0.3"


@pytest.mark.parametrize("name", ["claude", "codex"])
def test_fake_lines_arrive_while_the_cli_still_runs(name):
    argv, make = stream_command(name, preset(name))
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=fake_env())
    proc.stdin.write("Go\nFAKE-LINES: 3\n")
    proc.stdin.close()
    parser, shown, running_at_first = make(), [], None
    for line in proc.stdout:
        new = parser.feed(line)
        if "Working on it: step 1 of 3" in new:
            running_at_first = proc.poll() is None  # two more lines, 0.2 s apart, to come
        shown += new
    assert proc.wait(10) == 0
    assert running_at_first is True
    assert [s for s in shown if s.startswith("Working")] == [f"Working on it: step {i} of 3" for i in (1, 2, 3)]
    assert parser.finish().result == "Done: Go"


@pytest.mark.parametrize("name", ["claude", "codex"])
def test_fake_reject_flags_then_plain_fallback(name):
    prompt = "Go\nFAKE-REJECT-FLAGS\n"
    argv, make = stream_command(name, preset(name))
    started = time.monotonic()
    done = run_fake(argv, prompt)
    elapsed = time.monotonic() - started
    parser = make()
    parse(parser, done.stdout.splitlines())
    assert done.returncode == 2 and done.stdout == ""
    assert rejected_flags(done.returncode, elapsed, parser.finish().saw_stream, done.stderr)
    again = run_fake(preset(name), prompt)  # what the worker falls back to
    assert (again.returncode, again.stdout) == (0, "Done: Go\n")


def test_fake_complete_reports_through_ttnb(town):
    task = town.backlog_add("Write the changelog\nFAKE-COMPLETE\nFAKE-RESULT: Changelog written")
    for name in ("claude", "codex"):
        if name == "codex":
            task = town.backlog_add("Again FAKE-COMPLETE FAKE-RESULT: codex did it")
        done, shown, out = streamed(name, task.description, TINYTOWN_TASK_ID=task.id,
                                    TINYTOWN_TOWN_DIR=str(town.root))
        assert done.returncode == 0, done.stderr
        assert any("ttnb task complete" in line for line in shown)
        stored = town.task(task.id)
        assert stored.state == TaskState.COMPLETED
        assert stored.result == out.result == ("Changelog written" if name == "claude" else "codex did it")


def test_fake_complete_without_a_task_id_fails():
    argv, make = stream_command("claude", preset("claude"))
    done = run_fake(argv, "FAKE-COMPLETE", TINYTOWN_TASK_ID="")
    assert done.returncode == 1 and "TINYTOWN_TASK_ID" in done.stderr
    parser = make()
    assert "✘ Bash failed: FAKE-COMPLETE: TINYTOWN_TASK_ID is not set" in parse(parser, done.stdout.splitlines())
