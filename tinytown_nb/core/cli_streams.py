"""Read what an AI coding CLI reports as it runs: readable log lines, the result, the usage.

``claude --print --output-format stream-json --verbose`` and ``codex exec --json`` write one
JSON object per line while they work. A parser is fed those lines one at a time, as they
come, and returns readable lines for the task's live log (never raw JSON): the assistant's
text, one short line per tool call (``→ Bash: ls -la``), tool errors, shell commands
(``$ pytest -q``) with their exit code, file changes, and the final ``✔ result: …`` or
``✘ error: …``. At the end, :meth:`StreamParser.finish` gives a :class:`StreamOutcome`: the
final text, whether the CLI reported an error, and the token usage and cost (:class:`Usage`).

:func:`stream_command` adds the machine-readable flags to a ``claude``/``codex`` preset's
argv and names the parser to use; :func:`rejected_flags` tells when an installed CLI version
refused those flags, so the caller can run it again without them (:class:`PlainStream`).

Input is untrusted: a line that is not JSON, JSON of a type the format does not have, a
known event with missing fields or wrong types, or a line longer than ``MAX_PARSE`` comes
back as plain text (cut to ``MAX_LINE`` characters); nothing here raises on a line.

Example::

    >>> argv, make = stream_command("claude", ["claude", "--print"])
    >>> argv
    ['claude', '--print', '--output-format', 'stream-json', '--verbose']
    >>> parser = make()
    >>> parser.feed('{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Bash","input":{"command":"ls"}}]}}')
    ['→ Bash: ls']
    >>> parser.feed('{"type":"result","subtype":"success","is_error":false,"result":"Done.","total_cost_usd":0.01,"usage":{"input_tokens":5,"output_tokens":2}}')
    ['✔ result: Done.']
    >>> parser.finish().usage.cost_usd
    0.01
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .usage import Usage  # noqa: F401  (re-exported: the record's home is usage.py)
from .usage import cost_value as _cost, token_count as _count

MAX_LINE = 2000  # characters of one shown line (text, plain output)
SHORT = 120  # characters of a one-line summary (tool call, command, result)
MAX_TEXT_LINES = 200  # lines shown of one text block; the rest is counted, not shown
MAX_PARSE = 8 * 1024 * 1024  # longer lines are shown cut, not parsed as JSON
MAX_TRACKED = 1000  # tool-call ids remembered to name the tool in its error line
REJECT_WINDOW = 5.0  # seconds: a flag refusal exits at once, before any work

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TOOL_ERROR_TAG = re.compile(r"</?tool_use_error>")
_USAGE_ERROR = re.compile(
    r"unknown (option|argument|flag)|unexpected argument|unrecogni[sz]ed|usage:|"
    r"invalid (option|value)|argument '[^']*' is invalid|no such option|found argument",
    re.IGNORECASE)


# -- shown lines -------------------------------------------------------------------------


def _clean(text: str) -> str:
    """Text safe to store and show: lone surrogates replaced, control characters dropped."""
    return _CONTROL.sub("", text.encode("utf-8", "replace").decode("utf-8"))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _one_line(text: str, limit: int = SHORT) -> str:
    """Whitespace collapsed, cleaned, cut: a summary that fits one log line."""
    return _cut(_clean(" ".join(text[: limit * 4].split())), limit)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return _one_line(line)
    return ""


def _text_lines(text: str) -> list[str]:
    """A text block as shown lines: at most ``MAX_TEXT_LINES``, each cut to ``MAX_LINE``."""
    lines = text.strip("\n").splitlines()
    shown = [_cut(_clean(line.rstrip()), MAX_LINE) for line in lines[:MAX_TEXT_LINES]]
    if len(lines) > MAX_TEXT_LINES:
        shown.append(f"… ({len(lines) - MAX_TEXT_LINES} more lines)")
    return shown


def _plain(line: str) -> list[str]:
    """Output that is not an event, as it is (each line cut; blank lines kept)."""
    parts = line.split("\n")
    shown = [_cut(_clean(part if len(part) <= 2 * MAX_LINE else part[: 2 * MAX_LINE] + "…"), MAX_LINE)
             for part in parts[:MAX_TEXT_LINES]]  # cut before cleaning: lines may be huge
    if len(parts) > MAX_TEXT_LINES:
        shown.append(f"… ({len(parts) - MAX_TEXT_LINES} more lines)")
    return shown


class _Malformed(Exception):
    """A known event whose fields are missing or of the wrong type."""


def _get(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """``obj[key]`` checked against ``kind``; missing ⇒ ``default`` (or malformed)."""
    value = obj.get(key, default)
    if value is ...:
        raise _Malformed(key)
    if value is default:
        return value
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _Malformed(key)
    return value


def _usage_from(data: Any, *, input_key: str = "input_tokens",
                cache_creation_key: str = "cache_creation_input_tokens",
                cache_read_key: str = "cache_read_input_tokens") -> Usage:
    """A tolerant :class:`Usage` from a reported ``usage`` object (bad counts ⇒ 0)."""
    if not isinstance(data, Mapping):
        return Usage()
    return Usage(input_tokens=_count(data.get(input_key)) or 0,
                 output_tokens=_count(data.get("output_tokens")) or 0,
                 cache_creation_tokens=_count(data.get(cache_creation_key)) or 0,
                 cache_read_tokens=_count(data.get(cache_read_key)) or 0)


# -- parsers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamOutcome:
    """What a finished stream reported.

    ``result``: the final text (``None`` when the stream ended without one, or with an
    error); ``is_error``/``error``: the CLI reported a failure and why; ``usage``: tokens and
    cost (``None`` when not reported); ``saw_stream``: at least one line was of the format.
    """

    result: str | None = None
    is_error: bool = False
    error: str | None = None
    usage: Usage | None = None
    saw_stream: bool = False


class StreamParser:
    """Turns a CLI's stdout lines into log lines and, at the end, a :class:`StreamOutcome`.

    Subclasses implement ``_event(obj)`` for one decoded JSON object of their format (return
    ``None`` when ``obj`` is not of the format). Feed lines with or without their newline.

    >>> p = PlainStream(); p.feed("hello\\n"), p.finish().result
    (['hello'], None)
    """

    name = "plain"
    #: Event types of the format that are known but shown as nothing.
    quiet_types: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.saw_stream = False

    def feed(self, line: str | bytes) -> list[str]:
        """Readable lines for one line of output (often none, never raw JSON of the format).

        >>> ClaudeStream().feed("not json")
        ['not json']
        """
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        line = line.rstrip("\r\n")
        if not line.strip():
            return []
        if len(line) > MAX_PARSE or not line.lstrip().startswith("{"):
            return _plain(line)
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            return _plain(line)
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            return _plain(line)
        try:
            shown = self._event(obj)
        except (_Malformed, TypeError, ValueError, AttributeError, KeyError, RecursionError):
            return _plain(line)  # a known type with the wrong shape: show it, learn nothing
        if shown is None:
            return _plain(line)
        self.saw_stream = True
        return shown

    def _event(self, obj: dict[str, Any]) -> list[str] | None:
        return None

    def finish(self) -> StreamOutcome:
        """What the stream reported, once the CLI has exited.

        >>> ClaudeStream().finish()
        StreamOutcome(result=None, is_error=False, error=None, usage=None, saw_stream=False)
        """
        return StreamOutcome(saw_stream=self.saw_stream)


class PlainStream(StreamParser):
    """Any other CLI: each line shown as it is (cut); no result, error or usage.

    >>> PlainStream().feed("step 1 of 3")
    ['step 1 of 3']
    """

    def feed(self, line: str | bytes) -> list[str]:
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        self.saw_stream = True
        return _plain(line.rstrip("\r\n"))


_TOOL_KEYS = ("command", "file_path", "notebook_path", "pattern", "path", "url", "query",
              "description", "prompt", "skill", "subject")


def tool_summary(name: str, tool_input: Any) -> str:
    """One short line for a tool call: the tool and its most telling argument.

    >>> tool_summary("Edit", {"file_path": "src/app.py", "old_string": "a", "new_string": "b"})
    '→ Edit: src/app.py'
    """
    detail = ""
    if isinstance(tool_input, Mapping):
        for key in _TOOL_KEYS:
            if isinstance(tool_input.get(key), str) and tool_input[key].strip():
                detail = tool_input[key]
                break
        else:
            if isinstance(tool_input.get("todos"), list):
                detail = f"{len(tool_input['todos'])} items"
            else:
                detail = next((v for v in tool_input.values() if isinstance(v, str) and v.strip()), "")
    shown = f"→ {name}: {detail}" if detail else f"→ {name}"
    return _one_line(shown)


_STOPPED = {  # claude's error subtypes, for a result event that gives no message
    "error_max_turns": "claude stopped at its maximum number of turns",
    "error_during_execution": "claude failed during execution",
    "error_max_budget_usd": "claude stopped at its maximum budget",
    "error_max_structured_output_retries": "claude gave up producing the structured output",
}


class ClaudeStream(StreamParser):
    """``claude --print --output-format stream-json --verbose`` (also the one object of
    ``--output-format json``).

    Shown: the init line (model), assistant text, each tool call as one line, tool errors,
    API retries, and the final result. Not shown: thinking, successful tool output. The
    outcome comes from the ``result`` event: ``result`` (``None`` when it is an error),
    ``is_error`` (true, or an ``error_*`` subtype), the error text (``result`` or
    ``errors``), usage with ``total_cost_usd`` and ``num_turns``, and the model of the init
    or assistant events. No ``result`` event (the CLI died): nothing reported; the exit
    status decides.

    >>> ClaudeStream().feed('{"type":"system","subtype":"init","model":"claude-sonnet-4-5","session_id":"s"}')
    ['· claude started (model claude-sonnet-4-5)']
    """

    name = "claude"
    quiet_types = frozenset({"stream_event", "tool_progress", "auth_status", "rate_limit_event",
                             "tool_use_summary", "prompt_suggestion", "keep_alive",
                             "control_request", "control_response", "control_cancel_request"})

    def __init__(self) -> None:
        super().__init__()
        self.model: str | None = None
        self.session_id: str | None = None
        self._tools: dict[str, str] = {}  # tool_use id -> tool name (to label errors)
        self._outcome: StreamOutcome | None = None

    def _event(self, obj: dict[str, Any]) -> list[str] | None:
        kind = obj["type"]
        if kind in self.quiet_types:
            return []
        handler = {"system": self._system, "assistant": self._assistant,
                   "user": self._user, "result": self._result}.get(kind)
        return handler(obj) if handler else None

    def _system(self, obj: dict[str, Any]) -> list[str]:
        subtype = _get(obj, "subtype", str, "")
        if subtype == "init":
            model = _get(obj, "model", str, None)
            self.session_id = _get(obj, "session_id", str, None)
            if model:
                self.model = model
                return [_one_line(f"· claude started (model {model})")]
            return ["· claude started"]
        if subtype == "api_retry":
            attempt = _count(obj.get("attempt"))
            error = obj.get("error") if isinstance(obj.get("error"), str) else ""
            return [_one_line(f"⟳ API call retried{f' (attempt {attempt})' if attempt else ''}"
                              f"{f': {error}' if error else ''}")]
        if subtype == "compact_boundary":
            return ["· conversation compacted"]
        return []

    def _assistant(self, obj: dict[str, Any]) -> list[str]:
        message = _get(obj, "message", dict)
        content = _get(message, "content", (list, str), [])
        model = _get(message, "model", str, None)
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        shown: list[str] = []
        for block in content:
            if not isinstance(block, dict):
                raise _Malformed("content")
            kind = block.get("type")
            if kind == "text":
                shown += _text_lines(_get(block, "text", str))
            elif kind in ("tool_use", "server_tool_use", "mcp_tool_use"):
                name = _get(block, "name", str)
                block_id = _get(block, "id", str, None)
                if block_id and len(self._tools) < MAX_TRACKED:
                    self._tools[block_id] = name
                shown.append(tool_summary(name, block.get("input")))
            # thinking, redacted_thinking, images, …: not shown
        if isinstance(obj.get("error"), str):
            shown.append(_one_line(f"✘ assistant error: {obj['error']}"))
        if model and model != "<synthetic>":
            self.model = model
        return shown

    def _user(self, obj: dict[str, Any]) -> list[str]:
        message = _get(obj, "message", dict)
        content = _get(message, "content", (list, str), [])
        shown: list[str] = []
        if isinstance(content, str):
            return shown  # a prompt echoed back
        for block in content:
            if not isinstance(block, dict) or block.get("type") != "tool_result":
                continue
            name = self._tools.pop(block.get("tool_use_id"), None) if isinstance(
                block.get("tool_use_id"), str) else None
            if block.get("is_error") is True:
                text = _TOOL_ERROR_TAG.sub("", _result_text(block.get("content")))
                shown.append(_one_line(f"✘ {name or 'tool'} failed: {_first_line(text) or 'error'}"))
        return shown

    def _result(self, obj: dict[str, Any]) -> list[str]:
        subtype = _get(obj, "subtype", str, "success")
        is_error = _get(obj, "is_error", bool, False) or subtype.startswith("error")
        text = _get(obj, "result", str, None)
        errors = obj.get("errors") if isinstance(obj.get("errors"), list) else []
        error_text = None
        if is_error:
            detail = [e if isinstance(e, str) else json.dumps(e) for e in errors]
            error_text = (text or "; ".join(d for d in detail if d)
                          or f"{_STOPPED.get(subtype, 'claude reported an error')} ({subtype})")
            error_text = _clean(error_text)
        usage = _usage_from(obj.get("usage"))
        model = self.model
        if model is None and isinstance(obj.get("modelUsage"), dict) and obj["modelUsage"]:
            model = next((k for k in obj["modelUsage"] if isinstance(k, str)), None)
        usage = Usage(usage.input_tokens, usage.output_tokens, usage.cache_creation_tokens,
                      usage.cache_read_tokens, cost_usd=_cost(obj.get("total_cost_usd")),
                      turns=_count(obj.get("num_turns")), model=model)
        result = None if is_error or text is None else _clean(text)
        self._outcome = StreamOutcome(result=result,
                                      is_error=is_error, error=error_text, usage=usage,
                                      saw_stream=True)
        if is_error:
            return [_one_line(f"✘ error: {_first_line(error_text or '') or subtype}")]
        return [_one_line(f"✔ result: {_first_line(text or '')}")]

    def finish(self) -> StreamOutcome:
        if self._outcome is None:
            return StreamOutcome(saw_stream=self.saw_stream)
        return self._outcome


def _result_text(content: Any) -> str:
    """A tool result's text: a string, or the text blocks of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b["text"] for b in content
                         if isinstance(b, dict) and isinstance(b.get("text"), str))
    return ""


def _shown_command(command: str) -> str:
    """``bash -lc 'ls -la'`` ⇒ ``ls -la`` (how codex wraps a command); others unchanged."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    if (len(words) == 3 and os.path.basename(words[0]) in ("bash", "sh", "zsh")
            and words[1] in ("-c", "-lc")):
        return words[2]
    return command


class CodexStream(StreamParser):
    """``codex exec --json``.

    Shown: agent messages, reasoning summaries (``· …``), each command (``$ cmd`` when it
    starts, its exit code when it ends), file changes, MCP tool calls, web searches, the
    to-do list's progress, warnings (``! …``), and ``✔ result:``/``✘ error:`` per turn. The
    outcome: ``result`` is the last agent message; ``is_error`` when the last turn failed, or
    an ``error`` event came with no completed turn after it (codex also reports retried
    stream errors as ``error`` events); ``usage`` is the last ``turn.completed`` usage (codex
    reports the thread's running total there; its ``cached_input_tokens``, a part of
    ``input_tokens``, is ``cache_read_tokens``), its ``turns`` the number of completed turns,
    no cost (codex reports none) and the model given to the constructor (from ``-m``).

    >>> CodexStream().feed('{"type":"item.started","item":{"id":"i0","type":"command_execution","command":"bash -lc ls","status":"in_progress"}}')
    ['$ ls']
    """

    name = "codex"
    quiet_types = frozenset({"thread.started", "turn.started", "item.plan.delta",
                             "request_user_input"})

    def __init__(self, model: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.thread_id: str | None = None
        self._message: str | None = None  # last agent message
        self._turn_message: str | None = None  # last agent message of the current turn
        self._usage: Usage | None = None
        self._turns = 0
        self._error: str | None = None
        self._last_started: str | None = None  # the command whose `$ cmd` is the last line
        self._before: str | None = None  # the same, before the line being fed

    def feed(self, line: str | bytes) -> list[str]:
        self._before, self._last_started = self._last_started, None
        shown = super().feed(line)
        if not shown:
            self._last_started = self._before  # nothing shown: `$ cmd` is still the last line
        return shown

    def _event(self, obj: dict[str, Any]) -> list[str] | None:
        kind = obj["type"]
        if kind == "thread.started":
            self.thread_id = _get(obj, "thread_id", str, None)
            return []
        if kind in self.quiet_types:
            return []
        if kind in ("item.started", "item.updated", "item.completed"):
            return self._item(kind.split(".")[1], _get(obj, "item", dict))
        if kind == "turn.completed":
            usage = _usage_from(obj.get("usage"), cache_read_key="cached_input_tokens")
            self._turns += 1
            self._usage = usage
            self._error = None
            message, self._turn_message = self._turn_message, None
            return [_one_line(f"✔ result: {_first_line(message)}")] if message else []
        if kind == "turn.failed":
            error = _get(obj, "error", dict, {})
            self._error = _clean(_get(error, "message", str, "") or "turn failed")
            self._turn_message = None
            return [_one_line(f"✘ error: {_first_line(self._error)}")]
        if kind == "error":
            self._error = _clean(_get(obj, "message", str, "") or "error")
            return [_one_line(f"! {_first_line(self._error)}")]
        if isinstance(obj.get("model"), str):  # a future event naming the model
            self.model = obj["model"]
            return []
        return None

    def _item(self, phase: str, item: dict[str, Any]) -> list[str]:
        kind = _get(item, "type", str)
        item_id = _get(item, "id", str, "")
        if kind in ("agent_message", "plan"):
            if phase != "completed":
                return []
            text = _get(item, "text", str)
            self._message = self._turn_message = _clean(text)
            return _text_lines(text)
        if kind == "reasoning":
            text = _get(item, "text", str, "")
            return [_one_line(f"· {_first_line(text.replace('**', ''))}")] if phase == "completed" and text.strip() else []
        if kind == "command_execution":
            command = _shown_command(_get(item, "command", str))
            if phase == "started":
                self._last_started = item_id
                return [_one_line(f"$ {command}")]
            if phase != "completed":
                return []
            status = _get(item, "status", str, "")
            code = _get(item, "exit_code", int, None)
            end = "declined" if status == "declined" else f"exit {code}" if code is not None else status
            if item_id and item_id == self._before:  # right under its `$ cmd` line
                return [f"↳ {end}"]
            return [_one_line(f"$ {command} ↳ {end}")]
        if kind == "file_change":
            if phase != "completed":
                return []
            changes = _get(item, "changes", list)
            parts = [f"{c.get('kind', 'update')} {c.get('path')}" for c in changes
                     if isinstance(c, dict) and isinstance(c.get("path"), str)]
            mark = "✘ patch failed:" if item.get("status") == "failed" else "✎"
            return [_one_line(f"{mark} {', '.join(parts) or 'files changed'}")]
        if kind == "mcp_tool_call":
            name = f"{_get(item, 'server', str, '?')}.{_get(item, 'tool', str, '?')}"
            if phase == "started":
                return [tool_summary(name, item.get("arguments"))]
            error = item.get("error")
            if phase == "completed" and isinstance(error, dict) and isinstance(error.get("message"), str):
                return [_one_line(f"✘ {name} failed: {_first_line(error['message'])}")]
            return []
        if kind == "web_search":
            query = _get(item, "query", str, "")
            return [_one_line(f"→ web search: {query}")] if phase != "updated" and query else []
        if kind == "todo_list":
            steps = [s for s in _get(item, "items", list, []) if isinstance(s, dict)]
            done = sum(1 for s in steps if s.get("completed") is True)
            return [f"· to-do: {done}/{len(steps)} done"] if steps and phase != "completed" else []
        if kind == "error":
            return [_one_line(f"! {_get(item, 'message', str, 'warning')}")]
        if kind == "collab_tool_call":
            tool = _get(item, "tool", str, "collab")
            return [_one_line(f"→ agent {tool}")] if phase == "started" else []
        return [_one_line(f"· {kind}")] if phase == "completed" else []

    def finish(self) -> StreamOutcome:
        usage = None
        if self._usage is not None:
            usage = Usage(self._usage.input_tokens, self._usage.output_tokens, 0,
                          self._usage.cache_read_tokens, cost_usd=None, turns=self._turns,
                          model=self.model)
        failed = self._error is not None
        return StreamOutcome(result=None if failed else self._message, is_error=failed,
                             error=self._error, usage=usage, saw_stream=self.saw_stream)


# -- commands ----------------------------------------------------------------------------

ParserFactory = Callable[[], StreamParser]


def _option_value(argv: list[str], *names: str) -> str | None:
    """The value of the last ``--name value`` / ``--name=value`` in ``argv``."""
    found = None
    for i, word in enumerate(argv):
        for name in names:
            if word == name and i + 1 < len(argv):
                found = argv[i + 1]
            elif name.startswith("--") and word.startswith(name + "="):
                found = word.split("=", 1)[1]
    return found


def stream_command(cli_name: str, argv: list[str]) -> tuple[list[str], ParserFactory]:
    """The argv that makes a preset CLI report as it runs, and how to parse its stdout.

    ``claude`` (argv with ``--print``/``-p``): ``--output-format stream-json --verbose``
    after ``--print``, unless an ``--output-format`` is there (``stream-json`` then gets
    ``--verbose`` if missing; ``json`` is parsed too; ``text`` is plain). ``codex`` /
    ``codex-mini`` (argv starting ``codex exec``): ``--json`` right after ``exec`` unless
    there. Anything else: argv unchanged, :class:`PlainStream`. ``argv`` is not modified.

    >>> stream_command("codex", ["codex", "exec", "-m", "o4"])[0]
    ['codex', 'exec', '--json', '-m', 'o4']
    >>> stream_command("aider", ["aider", "--yes"])[1] is PlainStream
    True
    """
    argv = list(argv)
    program = os.path.basename(argv[0]) if argv else ""
    if cli_name == "claude" and ("--print" in argv or "-p" in argv):
        fmt = _option_value(argv, "--output-format")
        if fmt is None:
            at = argv.index("--print" if "--print" in argv else "-p") + 1
            argv[at:at] = ["--output-format", "stream-json", "--verbose"]
            return argv, ClaudeStream
        if fmt == "stream-json" and "--verbose" not in argv:
            argv.append("--verbose")  # claude refuses stream-json in print mode without it
        return argv, ClaudeStream if fmt in ("stream-json", "json") else PlainStream
    if cli_name in ("codex", "codex-mini") and program == "codex" and argv[1:2] == ["exec"]:
        if "--json" not in argv and "--experimental-json" not in argv:
            argv.insert(2, "--json")
        model = _option_value(argv, "-m", "--model")
        return argv, functools.partial(CodexStream, model=model) if model else CodexStream
    return argv, PlainStream


def rejected_flags(returncode: int, elapsed: float, saw_stream: bool, stderr_tail: str) -> bool:
    """True when the CLI refused the added flags (an older version): it exited non-zero
    within ``REJECT_WINDOW`` seconds, printed no stream line, and stderr reads like a usage
    error. The caller then runs it again without them.

    >>> rejected_flags(2, 0.1, False, "error: unexpected argument '--json' found")
    True
    >>> rejected_flags(1, 0.1, False, "Error: credit balance too low")
    False
    """
    return (returncode > 0 and elapsed <= REJECT_WINDOW and not saw_stream
            and bool(_USAGE_ERROR.search(stderr_tail or "")))
