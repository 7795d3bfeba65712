"""What agents cost (issue 11): the claude/codex stream read live, usage and cost recorded
per task, agent and tag, reports by functions and ``ttnb task usage``, and the budget.

Real worker processes run the fake ``claude`` and ``codex`` of ``tests/fakes`` (put first
on ``PATH`` by the test; workers inherit it), steered by directives in the task text
(FAKE-COST, FAKE-TOKENS, FAKE-ERROR, ...; see tests/fakes/_fakecli.py).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tinytown_nb import frames
from tinytown_nb.widgets import TownView
from tinytown_nb.core import AgentState, ConfigError, TaskNotFound, TaskState
from tinytown_nb.core.events import decode_entry

from conftest import eventually
from ipshell import loaded_shell
from test_cli import ttnb
from test_wire import check_task_hash

FAKES = Path(__file__).parent / "fakes"


@pytest.fixture(autouse=True)
def fake_clis(monkeypatch):
    """The fake claude and codex first on PATH (the worker processes inherit it)."""
    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CLI_DELAY", "0.01")


def events(town, kind: str) -> list:
    return [e for e in (decode_entry(i, f) for i, f in town.redis.xrange(town.keys.events))
            if e.type == kind]


def no_json(lines: list[str]) -> bool:
    """No line of the log is raw JSON of the stream."""
    for line in lines:
        try:
            if isinstance(json.loads(line), dict):
                return False
        except ValueError:
            pass
    return True


# --------------------------------------------------------------------------- the stream


def test_claude_result_cost_and_tokens_recorded_and_summed(town):
    town.spawn("dev", cli="claude")
    town.spawn("rev", cli="claude")
    a = town.assign("dev", "Write it\nFAKE-RESULT: written\nFAKE-COST: 0.25\nFAKE-TOKENS: 1000/200",
                    tags=["docs", "api"])
    b = town.assign("dev", "Again\nFAKE-RESULT: again\nFAKE-COST: 0.5\nFAKE-TOKENS: 10/5", tags=["api"])
    c = town.assign("rev", "Review\nFAKE-COST: 0.125\nFAKE-TOKENS: 300/30")
    done = [town.wait(task=t, timeout=30) for t in (a, b, c)]
    assert [(t.state, t.result) for t in done[:2]] == [(TaskState.COMPLETED, "written"),
                                                       (TaskState.COMPLETED, "again")]
    u = done[0].usage
    assert (u.input_tokens, u.output_tokens, u.cost_usd) == (1000, 200, 0.25)
    assert u.model == "claude-sonnet-4-5-20250929" and u.turns == 2
    # the live log: readable lines, never raw JSON
    log = town.task_log(a)
    assert log[0] == "· claude started (model claude-sonnet-4-5-20250929)"
    assert "→ Bash: ls" in log and log[-1] == "✔ result: written" and no_json(log)
    # sums: per agent, per tag (a task counts for each of its tags), per task, the town
    dev, rev = town.agent("dev").id, town.agent("rev").id
    by_agent = {r.label: r for r in town.usage("agent")}
    assert by_agent["dev"].usage.cost_usd == 0.75 and by_agent["dev"].tasks == 2
    assert by_agent["dev"].usage.input_tokens == 1010 and by_agent["rev"].usage.cost_usd == 0.125
    assert [r.label for r in town.usage("agent")] == ["dev", "rev"]  # most expensive first
    by_tag = {r.label: r.usage.cost_usd for r in town.usage("tag")}
    assert by_tag == {"api": 0.75, "docs": 0.25, "(untagged)": 0.125}
    assert town.usage_totals().cost_usd == 0.875 and town.usage_totals().output_tokens == 235
    assert town.agent_usage()[dev].cost_usd == 0.75 and town.agent_usage([rev])[rev].input_tokens == 300
    df = frames.usage_frame(town, by="task")
    assert df.task_id.tolist() == [b.id, a.id, c.id] and df.cost_usd.tolist() == [0.5, 0.25, 0.125]
    assert df.agent.tolist() == ["dev", "dev", "rev"]
    tf = frames.tasks_frame(town).set_index("id")
    assert tf.loc[a.id, ["input_tokens", "output_tokens", "cost_usd", "attempts"]].tolist() == [1000, 200, 0.25, 1]
    # the task hashes are still tinytown's; usage lives beside them
    for t in (a, b, c):
        check_task_hash(town.keys.task(t.id), town.redis.hgetall(town.keys.task(t.id)))
    assert town.redis.hget(town.keys.usage(a.id), "agent_id") == dev


def test_is_error_fails_the_task_and_a_malformed_line_is_shown_as_text(town):
    town.spawn("dev", cli="claude")
    bad = town.wait(task=town.assign("dev", "Break\nFAKE-ERROR: the API key is wrong"), timeout=30)
    assert bad.state is TaskState.FAILED and "the API key is wrong" in bad.result
    assert bad.usage is not None and bad.usage.cost_usd == 0.0123  # a failed run still costs
    odd = town.wait(task=town.assign("dev", "Odd\nFAKE-MALFORMED\nFAKE-RESULT: fine"), timeout=30)
    assert (odd.state, odd.result) == (TaskState.COMPLETED, "fine")
    assert "}}} this line is not JSON {{{" in town.task_log(odd)
    assert town.agent("dev").state is AgentState.IDLE  # the worker lives on


def test_codex_stream_gives_the_last_message_and_tokens_but_no_cost(town):
    town.spawn("cx", cli="codex")
    t = town.assign("cx", "Fix it\nFAKE-RESULT: fixed the bug\nFAKE-TOKENS: 500/50\nFAKE-LINES: 2")
    done = town.wait(task=t, timeout=30)
    assert (done.state, done.result) == (TaskState.COMPLETED, "fixed the bug")
    assert (done.usage.input_tokens, done.usage.output_tokens, done.usage.cost_usd) == (500, 50, None)
    log = town.task_log(t)
    assert "$ ls" in log and "✔ result: fixed the bug" in log and no_json(log)
    failed = town.wait(task=town.assign("cx", "Nope\nFAKE-ERROR: sandbox denied"), timeout=30)
    assert failed.state is TaskState.FAILED and "sandbox denied" in failed.result
    assert frames.usage_frame(town, "agent").cost_usd.isna().all()


def test_a_cli_that_refuses_the_flags_falls_back_to_plain_output(town):
    town.spawn("old", cli="claude")
    t = town.assign("old", "Old version\nFAKE-REJECT-FLAGS\nFAKE-RESULT: plain answer")
    done = town.wait(task=t, timeout=30)
    assert (done.state, done.result, done.usage) == (TaskState.COMPLETED, "plain answer", None)
    fell = events(town, "cli_fallback")
    assert len(fell) == 1 and "refused the machine-readable output flags" in fell[0].message
    again = town.wait(task=town.assign("old", "Next\nFAKE-REJECT-FLAGS\nFAKE-RESULT: second"), timeout=30)
    assert again.result == "second" and len(events(town, "cli_fallback")) == 1  # remembered


def test_a_report_through_ttnb_task_complete_wins_and_usage_is_still_recorded(town):
    town.spawn("dev", cli="claude")
    t = town.assign("dev", "Report it\nFAKE-COMPLETE\nFAKE-RESULT: reported by the agent\nFAKE-EXIT: 3\n"
                           "FAKE-COST: 0.2")
    done = town.wait(task=t, timeout=30)
    assert (done.state, done.result) == (TaskState.COMPLETED, "reported by the agent")
    eventually(lambda: town.task(t).usage is not None, timeout=10, what="the usage recorded")
    assert town.task(t).usage.cost_usd == 0.2


# --------------------------------------------------------------------------- reports


def test_function_agent_and_ttnb_reports_accumulate(town):
    def priced(task, ctx):
        ctx.usage(input_tokens=100, output_tokens=10, cost_usd=0.01, model="small")
        ctx.usage(input_tokens=50, output_tokens=5, cost_usd=0.02)
        return "ok"

    def bad_report(task, ctx):
        ctx.usage(input_tokens=-1)

    town.spawn("fn", fn=priced)
    town.spawn("bad", fn=bad_report)
    t = town.wait(task=town.assign("fn", "price it"), timeout=10)
    assert (t.usage.input_tokens, t.usage.output_tokens, t.usage.model) == (150, 15, "small")
    assert math.isclose(t.usage.cost_usd, 0.03)
    refused = town.wait(task=town.assign("bad", "x"), timeout=10)
    assert refused.state is TaskState.FAILED and "input_tokens must be a whole number" in refused.result
    # ttnb task usage adds to the same task (a command agent reports this way)
    code, out, err = ttnb(town.root, "task", "usage", t.short_id, "--input-tokens", "1000",
                          "--output-tokens", "100", "--cost-usd", "0.5", "--model", "big")
    assert code == 0, err
    assert "1,150 in / 115 out tokens, $0.5300 (big)" in out
    u = town.task(t).usage
    assert (u.input_tokens, u.model, u.cost_usd) == (1150, "big", pytest.approx(0.53))
    assert town.agent_usage()[town.agent("fn").id].cost_usd == pytest.approx(0.53)
    before = {k: town.redis.hgetall(k) for k in town.redis.scan_iter(match="tt:test:usage*")}
    for args, message in (
            (("--input-tokens", "-5"), "input_tokens must be a whole number of 0 or more"),
            (("--cost-usd", "nan"), "cost_usd must be a finite number of 0 or more"),
            (("--cost-usd", "-1"), "cost_usd must be a finite number of 0 or more")):
        code, _, err = ttnb(town.root, "task", "usage", t.short_id, *args, sub=False)
        assert code == 1 and message in err and err.count("\n") == 1
    code, _, err = ttnb(town.root, "task", "usage", "ffffffff-ffff-4fff-bfff-ffffffffffff",
                        "--input-tokens", "1", sub=False)
    assert code == 1 and "ffffffff" in err
    with pytest.raises(TaskNotFound):
        town.record_usage("ffffffff-ffff-4fff-bfff-ffffffffffff", input_tokens=1)
    with pytest.raises(ConfigError):
        town.record_usage(t, cost_usd=float("inf"))
    after = {k: town.redis.hgetall(k) for k in town.redis.scan_iter(match="tt:test:usage*")}
    assert after == before  # nothing written by a refused report


def test_ttnb_cost_and_the_magics(town, tmp_path):
    town.spawn("fn", fn=lambda task, ctx: ctx.usage(input_tokens=7, output_tokens=3, cost_usd=0.5))
    done = town.wait(task=town.assign("fn", "x", tags=["t1"]), timeout=10)
    assert done.usage.cost_usd == 0.5
    code, out, _ = ttnb(town.root, "cost", "--by", "tag", sub=False)
    assert code == 0 and out.splitlines()[1].split() == ["t1", "1", "7", "3", "0.5000"]
    code, out, _ = ttnb(town.root, "cost", "--json", sub=False)
    data = json.loads(out)
    assert data["rows"][0]["label"] == "fn" and data["total"]["cost_usd"] == 0.5
    code, out, _ = ttnb(town.root, "budget", "2", sub=False)
    assert code == 0 and "Budget $2: $0.5000 recorded" in out
    code, out, _ = ttnb(town.root, "budget", "off", sub=False)
    assert "No budget" in out
    code, _, err = ttnb(town.root, "budget", "-3", sub=False)
    assert code != 0
    code, _, err = ttnb(town.root, "budget", "lots", sub=False)
    assert code == 1 and "must be an amount of US dollars" in err
    shell = loaded_shell(tmp_path / "ipython")
    ip = next(shell)
    try:
        ip.run_cell(f"%tt_init {town.root}")
        df = ip.run_cell("%tt_cost --by agent -o costs").result
        assert df.agent.tolist() == ["fn"] and ip.user_ns["costs"].cost_usd.tolist() == [0.5]
        assert ip.run_cell("%tt_budget 1.5").result.usd == 1.5
        assert ip.run_cell("%tt_budget off").result.usd is None
    finally:
        shell.close()


# --------------------------------------------------------------------------- the budget


def test_the_budget_pauses_ai_agents_after_the_run_that_crossed_it(town):
    town.spawn("dev", cli="claude")
    town.spawn("rev", cli="claude")
    town.spawn("fn", fn=lambda task: "not an AI agent")  # reported no cost: left alone
    town.set_budget(usd=0.3)
    first = town.wait(task=town.assign("dev", "One\nFAKE-COST: 0.2"), timeout=30)
    assert first.state is TaskState.COMPLETED and town.agent("dev").state is AgentState.IDLE
    crossing = town.assign("dev", "Two\nFAKE-COST: 0.2")
    queued = town.assign("dev", "Three\nFAKE-COST: 0.2")  # waits behind the crossing run
    assert town.wait(task=crossing, timeout=30).state is TaskState.COMPLETED  # its run finishes
    eventually(lambda: town.agent("dev").state is AgentState.PAUSED, timeout=10, what="dev paused")
    assert town.agent("rev").state is AgentState.PAUSED and town.agent("fn").state is AgentState.IDLE
    assert town.task(queued).state is TaskState.ASSIGNED  # nothing new started
    b = town.budget()
    assert b.exceeded and b.usd == 0.3 and b.spent_usd == pytest.approx(0.4)
    exceeded = events(town, "budget_exceeded")
    assert len(exceeded) == 1 and "$0.3" in exceeded[0].message
    view = TownView(town, start=False)  # the dashboard shows it: header and agents table
    try:
        assert "budget reached: AI agents paused" in view.counts.value
        assert "cost <b>$0.4000</b>" in view.counts.value
        assert "$0.4000" in [c.text for r in view.agents_grid.given for c in r.cells]
    finally:
        view.close()
    assert town.wait(task=town.assign("fn", "still works"), timeout=10).state is TaskState.COMPLETED
    # raising the budget and resuming go on
    assert not town.set_budget(usd=5).exceeded
    town.resume("dev")
    assert town.wait(task=queued, timeout=30).state is TaskState.COMPLETED
    assert town.agent("dev").state is AgentState.IDLE
    assert len(events(town, "budget_exceeded")) == 1
    # a budget set below what was already spent pauses at once
    town.set_budget(usd=0.5)
    eventually(lambda: town.agent("dev").state is AgentState.PAUSED, timeout=10, what="paused again")
    assert len(events(town, "budget_exceeded")) == 2
    with pytest.raises(ConfigError, match="amount of US dollars"):
        town.set_budget(usd=float("nan"))
    with pytest.raises(ConfigError):
        town.set_budget(usd=0)
    assert town.budget().usd == 0.5  # a refused budget changes nothing
