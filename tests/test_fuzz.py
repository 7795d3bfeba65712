"""Fuzzing the two faces people type into (issue 9): thousands of seeded, mostly wrong
``%tt_*`` lines and ``ttnb`` command lines against a real town. Every one must end in a
result or one expected error (UsageError / a TinytownError / argparse's exit 2) — never a
traceback — and a refused call must write nothing."""

from __future__ import annotations

import contextlib
import io
import random

import pytest
import redis
from IPython.core.error import UsageError

from tinytown_nb.cli import main as ttnb
from tinytown_nb.core import TinytownError

from ipshell import loaded_shell

TOKENS = ["dev", "qa", "nobody", "", "3f2a", "0000", "--urgent", "--query", "--info", "--ack",
          "--timeout", "nan", "inf", "-inf", "-1", "0", "1e309", "99999999999999999999", "--tags",
          "a,b", ",,,", "--state", "bogus", "completed", "in_flight", "-n", "--agent", "-o", "x",
          "--town", "/nonexistent", "'quoted text'", '"unterminated', "{undefined}", "$HOME",
          "💥", "a:b", "../../etc", "-", "--", "?", "x" * 3000, "\t", "supervisor", "--all",
          "--force", "--stale-after", "--result", "--error", "--reason", "-5 degrees", "requeue",
          "drop", "list", "add", "claim", "remove", "assign-all", "--cli", "cat", "--fn", "len",
          "--no-start", "--replace", "--role", "--nickname", "Fred", "--after", "--render"]
MAGICS = ["tt_send", "tt_assign", "tt_tasks", "tt_inbox", "tt_backlog", "tt_kill", "tt_interrupt",
          "tt_resume", "tt_close", "tt_agents", "tt_status", "tt_events", "tt_history", "tt_log",
          "tt_recover", "tt_dead", "tt_prune", "tt_spawn"]
VERBS = [["send"], ["assign"], ["task", "complete"], ["task", "fail"], ["task", "cancel"],
         ["task", "show"], ["task", "list"], ["backlog", "add"], ["backlog", "list"],
         ["backlog", "claim"], ["backlog", "remove"], ["kill"], ["interrupt"], ["resume"],
         ["close"], ["inbox"], ["list"], ["status"], ["events"], ["history"], ["recover"],
         ["reclaim"], ["dead", "list"], ["dead", "requeue"], ["dead", "drop"], ["prune"]]


def snapshot(r: redis.Redis, town: str) -> dict:
    return {key: r.dump(key) for key in r.scan_iter(match=f"tt:{town}:*".encode(), count=1000)}


def line(rng: random.Random) -> list[str]:
    return [rng.choice(TOKENS) for _ in range(rng.randint(0, 5))]


@pytest.fixture
def ip(tmp_path):
    yield from loaded_shell(tmp_path)


def test_fuzzed_magic_lines_never_trace_back(ip, tmp_path):
    rng = random.Random(9)
    ip.run_cell(f"%tt_init {tmp_path / 'town'} --name fuzz")
    ip.run_cell("%tt_spawn dev --no-start")
    ip.run_cell("%tt_spawn qa --no-start")
    from tinytown_nb.magics import _loaded
    town = _loaded[id(ip)][0].town
    r = redis.Redis.from_url(town.config.redis_url())
    refused = accepted = 0
    for _ in range(2000):
        name = rng.choice(MAGICS)
        words = line(rng) + (["--no-start"] if name == "tt_spawn" else [])
        text = " ".join(words)
        before = snapshot(r, "fuzz")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                ip.run_line_magic(name, text)
            accepted += 1
        except (UsageError, TinytownError):
            refused += 1
            assert snapshot(r, "fuzz") == before, f"%{name} {text!r} wrote before refusing"
        except Exception as exc:  # noqa: BLE001 — the point of the test
            pytest.fail(f"%{name} {text!r} raised {type(exc).__name__}: {exc}")
    assert refused > 500 and accepted > 100  # the generator reaches both sides


def test_fuzzed_ttnb_command_lines_never_trace_back(tmp_path, capsys):
    from tinytown_nb.core import Town

    town = Town.init(tmp_path / "town", name="fuzz")
    try:
        town.spawn("dev", start=False)
        town.spawn("qa", start=False)
        town.assign("dev", "a task to poke at")
        r = redis.Redis.from_url(town.config.redis_url())
        rng = random.Random(11)
        codes = {0: 0, 1: 0, 2: 0}
        for _ in range(1200):
            argv = ["-t", str(town.root), *rng.choice(VERBS), *line(rng)]
            before = snapshot(r, "fuzz")
            try:
                code = ttnb(argv)
            except SystemExit as exc:  # argparse's bad usage
                code = exc.code
            out = capsys.readouterr()
            assert "Traceback" not in out.err + out.out, argv
            assert code in codes, (argv, code, out.err)
            codes[code] += 1
            if code:
                assert snapshot(r, "fuzz") == before, f"ttnb {argv[2:]} wrote before failing"
        assert codes[0] > 50 and codes[1] > 30 and codes[2] > 100, codes  # all three reached
    finally:
        town.shutdown()
