"""Every %tt_* magic in an in-process IPython shell against a real town: results, bad and
odd input (UsageError for what the parser sees, the core's one-line errors otherwise),
{var} expansion, -o, help, completion, and a clean %reload_ext."""

from __future__ import annotations

import pandas as pd
import pytest
from IPython.core.completer import provisionalcompleter
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from tinytown_nb import frames
from tinytown_nb.core import (
    Agent, AgentExists, AgentNotFound, ConfigError, InvalidName, InvalidState, Message,
    NotInitialized, Task, TaskNotFound, TinytownError, Town, WaitTimeout,
)
from tinytown_nb.magics import TinytownMagics, _loaded, question_mark_magics

from conftest import TCP_PASSWORD
from ipshell import loaded_shell


@pytest.fixture
def ip(tmp_path):
    yield from loaded_shell(tmp_path)


@pytest.fixture
def tt(ip, tmp_path):
    """A shell with a town made by %tt_init and one registered agent 'dev' (no worker)."""
    ip.run_cell(f"%tt_init {tmp_path / 'town'} --name demo")
    ip.run_cell("%tt_spawn dev --no-start")
    return ip


def magics(ip) -> TinytownMagics:
    return _loaded[id(ip)][0]


def last(ip):
    """The value of the last cell (what a notebook would display)."""
    return ip.user_ns["_"]


# ------------------------------------------------------------------ init, towns, config


def test_magic_before_init_says_what_to_do(ip):
    with pytest.raises(ConfigError, match=r"Run %tt_init"):
        ip.run_cell("%tt_agents")


def test_init_creates_then_reconnects(ip, tmp_path):
    ip.run_cell(f"%tt_init {tmp_path / 't'} --name demo -o town")
    town = ip.user_ns["town"]
    assert isinstance(town, Town) and town.name == "demo"
    assert (tmp_path / "t" / "tinytown.toml").exists()
    ip.run_cell(f"%tt_init {tmp_path / 't'}")  # re-running a cell is normal
    assert last(ip) is town and magics(ip).town is town
    with pytest.raises(ConfigError, match="already holds town 'demo'"):
        ip.run_cell(f"%tt_init {tmp_path / 't'} --name other")
    assert magics(ip).town is town


def test_init_path_problems_are_one_line(ip, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        ip.run_cell(f"%tt_init {tmp_path / 'afile'}")
    # the file system refuses (even root cannot make a directory inside a file)
    with pytest.raises(ConfigError, match=r"Not a directory: .*afile.*Check the path") as info:
        ip.run_cell(f"%tt_init {tmp_path / 'afile' / 'town'}")
    assert "\n" not in str(info.value) and (tmp_path / "afile").read_text() == "x"


def test_init_recovers_agents_of_a_kernel_that_is_gone(ip, tmp_path, capsys):
    import subprocess
    import sys

    root = tmp_path / "t"
    Town.init(root, name="t").disconnect()
    kernel = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom tinytown_nb.core import Town\n"
        "Town.connect(sys.argv[1]).spawn('helper', fn=str)\nprint('ready', flush=True)\n"
        "time.sleep(60)\n"), str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert kernel.stdout.readline() == "ready\n"
    finally:
        kernel.kill()
        kernel.wait()
    town = ip.run_cell(f"%tt_init {root}").result
    assert "Recovered helper: its worker (a kernel or process that is gone) stopped" in capsys.readouterr().out
    assert town.agent("helper").state.value == "stopped"
    town.shutdown()
    town.shutdown()  # re-running a tidy-up cell is harmless


def test_init_town_option_is_the_directory(ip, tmp_path):
    town = ip.run_cell(f"%tt_init --town {tmp_path / 'a'} --name a").result
    assert town.root == (tmp_path / "a").resolve() and town.name == "a"
    assert (tmp_path / "a" / "tinytown.toml").exists()
    assert not (tmp_path / "default").exists()                   # not the default directory
    same = ip.run_cell(f"%tt_init {tmp_path / 'a'} --town {tmp_path / 'x' / '..' / 'a'}").result
    assert same is town
    with pytest.raises(UsageError, match="Give the town directory once"):
        ip.run_cell(f"%tt_init {tmp_path / 'a'} --town {tmp_path / 'b'}")
    assert not (tmp_path / "b").exists() and magics(ip).town is town


def test_town_displays_as_a_summary(tt, tmp_path, capsys):
    town = magics(tt).town
    tt.run_cell("%tt_spawn ops --no-start")
    tt.run_cell("%tt_kill ops")
    tt.run_cell("%tt_assign dev first <b>job</b>")
    tt.run_cell("%tt_backlog add later")
    capsys.readouterr()
    shown = tt.run_cell(f"%tt_init {tmp_path / 'town'}").result   # what %tt_init shows
    assert shown is town
    text = capsys.readouterr().out
    assert "Town 'demo'" in text and "<Town" not in text
    data, _ = tt.display_formatter.format(town)
    lines = data["text/plain"].splitlines()
    assert lines[0] == "Town 'demo'"
    assert [line.split(":", 1)[0].strip() for line in lines[1:]] == [
        "directory", "redis", "agents", "tasks", "waiting"]
    assert str(town.root) in lines[1] and town.url in lines[2]
    assert lines[3].endswith("2 (1 starting, 1 stopped)")
    assert lines[4].endswith("2 (1 pending, 1 assigned)")
    assert lines[5].endswith("backlog 1, inbox 1")
    assert data["text/plain"] in text                           # the cell showed the same
    html = data["text/html"]
    assert "<table>" in html and "Town &#x27;demo&#x27;" in html and "1 starting, 1 stopped" in html
    assert repr(town) == f"<Town 'demo' at {town.root} on {town.url}>"   # the core repr stays
    assert tt.display_formatter.format([town])[0]["text/plain"] == f"[{town!r}]"
    town.shutdown()                                                 # Redis gone: still shows
    magics(tt).towns.clear()
    data, _ = tt.display_formatter.format(town)
    assert "status:" in data["text/plain"] and "unavailable" in data["text/plain"]


def test_town_summary_never_shows_the_password(password_server, ip, tmp_path, capsys):
    url = f"redis://:{TCP_PASSWORD}@127.0.0.1:{password_server}/0"
    town = ip.run_cell(f"%tt_init {tmp_path / 'pw'} --name pw --url {url}").result
    data, _ = ip.display_formatter.format(town)
    for text in [*data.values(), capsys.readouterr().out]:
        assert TCP_PASSWORD not in text and "127.0.0.1" in text and "agents" in text


def test_init_uses_the_default_dir_config(ip, tmp_path):
    ip.run_cell("%tt_init")
    assert magics(ip).town.root == (tmp_path / "default").resolve()  # set by the fixture
    ip.run_cell(f"%config TinytownMagics.default_dir = {str(tmp_path / 'cfg')!r}")
    ip.run_cell("%tt_init")
    assert magics(ip).town.root == (tmp_path / "cfg").resolve()
    assert magics(ip) in ip.configurables


def test_init_with_a_url_uses_that_server(tt, tmp_path):
    first = magics(tt).town
    url = first.config.redis_url()
    town = tt.run_cell(f"%tt_init {tmp_path / 'shared'} --name shared --url {url}").result
    assert town.server is None and town.name == "shared"  # no managed server of its own
    tt.run_cell("%tt_spawn guest --no-start")
    again = Town.connect(tmp_path / "shared")
    assert [a.name for a in again.agents()] == ["guest"]
    again.disconnect()
    assert [a.name for a in first.agents()] == ["dev"]  # same Redis, separate namespaces


def test_town_option_on_another_town(tt, tmp_path):
    other = Town.init(tmp_path / "other", name="other")
    other.spawn("far", start=False)
    try:
        df = tt.run_cell(f"%tt_agents --town {tmp_path / 'other'}").result
        assert df.name.tolist() == ["far"]
        assert tt.run_cell("%tt_agents").result.name.tolist() == ["dev"]  # default unchanged
        with pytest.raises(NotInitialized):
            tt.run_cell(f"%tt_agents --town {tmp_path / 'nowhere'}")
    finally:
        magics(tt).towns.pop((tmp_path / "other").resolve(), None)
        other.shutdown()


def test_unknown_option_and_bad_quotes_are_usage_errors(tt):
    with pytest.raises(UsageError, match="unrecognized arguments"):
        tt.run_cell("%tt_agents --bogus")
    with pytest.raises(UsageError, match="No closing quotation"):
        tt.run_cell('%tt_kill "dev')
    with pytest.raises(UsageError, match="not a Python variable name"):
        tt.run_cell("%tt_kill dev -o 1abc")
    assert tt.run_cell("%tt_agents").result.state.tolist() == ["starting"]  # nothing was done


# ------------------------------------------------------------------ spawn and agent lifecycle


def test_spawn_help_shows_usage(tt, capsys):
    tt.run_cell("%tt_spawn?")
    out = capsys.readouterr().out
    assert "%tt_spawn [--cli CLI] [--fn FUNC]" in out and "--replace" in out and "--town DIR" in out


def test_spawn_registers_and_refuses_live_duplicates(tt):
    agent = tt.run_cell("%tt_spawn rev --no-start --role reviewer --nickname Rita --parent dev -o r").result
    assert isinstance(agent, Agent) and tt.user_ns["r"] is agent
    assert (agent.role_id, agent.nickname, agent.state.value) == ("reviewer", "Rita", "starting")
    with pytest.raises(AgentExists, match="already starting"):
        tt.run_cell("%tt_spawn rev --no-start")
    again = tt.run_cell("%tt_spawn rev --no-start --replace").result
    assert again.id == agent.id and again.state.value == "starting"


def test_rerunning_a_spawn_cell_is_fine(tt):
    """Run All twice, or an edited function: the same line again must not fail."""
    tt.run_cell("def shout(task):\n    return task.description.upper()\n")
    first = tt.run_cell("%tt_spawn loud --fn shout").result
    tt.run_cell("def shout(task):\n    return task.description.upper() + '!'\n")  # edited
    again = tt.run_cell("%tt_spawn loud --fn shout").result
    assert again.id == first.id and again.state.value == "idle"
    assert tt.run_cell("%%tt_assign loud --wait\nhey").result.result == "HEY!"  # the new one
    cat = tt.run_cell("%tt_spawn kitty --cli cat").result
    assert tt.run_cell("%tt_spawn kitty --cli cat").result.id == cat.id  # left as it is
    with pytest.raises(AgentExists, match="already idle"):
        tt.run_cell("%tt_spawn kitty --cli 'cat -n'")  # another command: not a re-run
    with pytest.raises(AgentExists, match="already idle"):
        tt.run_cell("%tt_spawn kitty --cli cat --role reviewer")


@pytest.mark.parametrize("line, error", [
    ("%tt_spawn", UsageError),                      # missing name
    ("%tt_spawn my agent --fn len", UsageError),    # two names: CLI agents only
    ('%tt_spawn "my agent"', InvalidName),          # quoted: the core rejects the name
    ("%tt_spawn a:b", InvalidName),
    ("%tt_spawn supervisor", InvalidName),
    ("%tt_spawn x --cli claude --fn f", UsageError),
    ("%tt_spawn x --fn nothing_here", UsageError),
    ("%tt_spawn x --fn not_callable", UsageError),
    ("%tt_spawn x --max-rounds many", UsageError),
    ("%tt_spawn x --no-start --parent nobody", AgentNotFound),
])
def test_spawn_bad_input(tt, line, error):
    tt.user_ns["not_callable"] = 42
    with pytest.raises(error):
        tt.run_cell(line)
    assert tt.run_cell("%tt_agents").result.name.tolist() == ["dev"]  # nothing half-made


def test_spawn_function_agent_and_wait_for_its_task(tt):
    tt.run_cell("def shout(task):\n    return task.description.upper()\n")
    agent = tt.run_cell("%tt_spawn shouter --fn shout").result
    assert agent.state.value == "idle" and agent.cli == "fn:shout"
    task = tt.run_cell("%%tt_assign shouter --wait --timeout 20\nhello {world}").result
    assert task.state.value == "completed" and task.result == "HELLO {WORLD}"
    got = tt.run_cell(f"%tt_wait --task {task.short_id} --timeout 5").result
    assert got.id == task.id
    assert tt.run_cell("%tt_wait shouter --timeout 10").result.name == "shouter"
    done = tt.run_cell("%tt_watch --until idle --timeout 10").result
    assert done.counts.tasks["completed"] == 1 and done.condition == "idle"
    assert done.frame().loc["demo", ("tasks", "completed")] == 1



def test_log_prints_what_a_function_agent_printed(tt, capsys):
    tt.run_cell("def chatty(task):\n    print('step 1')\n    print('step 2')\n    return 'ok'\n")
    tt.run_cell("%tt_spawn chatty --fn chatty")
    task = tt.run_cell("%%tt_assign chatty --wait --timeout 20\ntalk").result
    capsys.readouterr()
    assert tt.run_cell(f"%tt_log {task.short_id} -o lines").result is None  # text, not a list
    assert capsys.readouterr().out == "step 1\nstep 2\n"
    assert tt.user_ns["lines"] == ["step 1", "step 2"]
    quiet = tt.run_cell("%tt_assign dev never run").result
    capsys.readouterr()
    tt.run_cell(f"%tt_log {quiet.short_id}")
    assert capsys.readouterr().out == f"(task {quiet.short_id} printed nothing)\n"
    with pytest.raises(TaskNotFound):
        tt.run_cell("%tt_log ffffffff-ffff-4fff-bfff-ffffffffffff")

def test_lifecycle_magics(tt):
    assert tt.run_cell("%tt_interrupt dev").result.state.value == "paused"
    with pytest.raises(InvalidState):
        tt.run_cell("%tt_interrupt dev")  # already paused
    assert tt.run_cell("%tt_resume dev").result.state.value == "idle"
    assert tt.run_cell("%tt_close dev").result.state.value == "draining"
    assert tt.run_cell("%tt_kill dev").result.state.value == "stopped"
    with pytest.raises(InvalidState):
        tt.run_cell("%tt_resume dev")
    for magic in ("kill", "interrupt", "resume", "close", "restart"):
        with pytest.raises(AgentNotFound, match="'nobody'"):
            tt.run_cell(f"%tt_{magic} nobody")
        with pytest.raises(UsageError):
            tt.run_cell(f"%tt_{magic}" + (" dev --all" if magic == "kill" else ""))


def test_archive_magic(tt):
    task = tt.run_cell('%tt_assign dev "Ship it"').result
    magics(tt).town.complete_task(task.id)
    assert tt.run_cell("%tt_archive").result == 0  # nothing older than 7 days
    assert tt.run_cell("%tt_archive --older-than 0 -o moved").result == 1
    assert tt.user_ns["moved"] == 1
    listed = tt.run_cell("%tt_archive --list").result
    assert listed.id.tolist() == [task.id] and "archived_at" in listed.columns
    assert tt.run_cell("%tt_tasks").result.empty
    with pytest.raises(ConfigError, match="Only finished tasks"):
        tt.run_cell("%tt_archive --states pending")


def test_restart_brings_a_function_agent_back(tt):
    tt.run_cell("def echo(task):\n    return task.description\n")
    tt.run_cell("%tt_spawn bot --fn echo")
    tt.run_cell("%tt_kill bot")
    assert tt.run_cell("%tt_restart bot").result.state.value == "idle"


def test_kill_all_prune_and_recover(tt):
    tt.run_cell("%tt_spawn ops --no-start")
    stopped = tt.run_cell("%tt_kill --all").result
    assert sorted(stopped.name) == ["dev", "ops"] and (stopped.state == "stopped").all()
    assert tt.run_cell("%tt_recover").result is not None
    pruned = tt.run_cell("%tt_prune -o gone").result
    assert sorted(pruned.name) == ["dev", "ops"] and tt.user_ns["gone"] is pruned
    assert tt.run_cell("%tt_agents").result.empty
    tt.run_cell("%tt_spawn again --no-start")
    assert tt.run_cell("%tt_prune").result.empty          # not stopped: kept
    assert tt.run_cell("%tt_prune --all").result.name.tolist() == ["again"]


def test_reset_needs_force(tt, capsys):
    tt.run_cell("%tt_assign dev something")
    assert tt.run_cell("%tt_reset").result is None
    assert "would delete 1 agent" in capsys.readouterr().out
    assert len(tt.run_cell("%tt_tasks").result) == 1
    assert tt.run_cell("%tt_reset --force --agents-only").result > 0
    assert tt.run_cell("%tt_agents").result.empty and len(tt.run_cell("%tt_tasks").result) == 1
    assert "Deleted" in capsys.readouterr().out
    tt.run_cell("%config TinytownMagics.feedback = 0")
    tt.run_cell("%tt_reset --force")
    assert "Deleted" not in capsys.readouterr().out
    assert tt.run_cell("%tt_tasks").result.empty


# ------------------------------------------------------------------ assign


def test_cell_assign_takes_the_body_verbatim(tt):
    body = 'Fix {the} bug in `f()`:\n  json = {"a": 1}\n\nand $HOME stays  '
    task = tt.run_cell(f"%%tt_assign dev --tags a,b -o t\n{body}\n").result
    assert isinstance(task, Task) and task.description == body
    assert task.tags == ["a", "b"] and tt.user_ns["t"] is task
    assert frames.tasks_frame(magics(tt).town).description.tolist() == [body]


def test_cell_assign_line_gets_var_expansion_and_render_fills_double_braces(tt):
    tt.user_ns.update(who="dev", n=3, files=["a.py", "b.py"])
    cell = "%%tt_assign {who} --render\nReview {{ files[0] }} and {{n}} more; {keep} {{ n * 2 }}"
    task = tt.run_cell(cell).result
    assert task.description == "Review a.py and 3 more; {keep} 6"
    assert task.assigned_to == magics(tt).town.agent("dev").id
    plain = tt.run_cell("%%tt_assign dev\n{{n}} stays").result
    assert plain.description == "{{n}} stays"


@pytest.mark.parametrize("cell, error", [
    ("%%tt_assign dev\n", UsageError),
    ("%%tt_assign dev\n   \n\t\n", UsageError),
    ("%%tt_assign\nsome text", UsageError),
    ("%%tt_assign dev extra words\ntext", UsageError),
    ("%%tt_assign dev --render\n{{ undefined_name }}", UsageError),
    ("%%tt_assign dev --render\n{{ }}", UsageError),
    ("%%tt_assign dev --wait-timeout 5\ntext", UsageError),  # only with --wait
    ("%%tt_assign dev --timeout soon\ntext", UsageError),  # --timeout: a duration per attempt
    ("%%tt_assign dev --timeout 0\ntext", UsageError),
    ("%%tt_assign dev --retries 500\ntext", ConfigError),
    ("%%tt_assign nobody\ntext", AgentNotFound),
    ("%tt_assign dev", UsageError),
    ("%tt_assign", UsageError),
    ("%tt_assign nobody do it", AgentNotFound),
])
def test_assign_bad_input_leaves_nothing(tt, cell, error):
    with pytest.raises(error):
        tt.run_cell(cell)
    assert tt.run_cell("%tt_tasks").result.empty


def test_line_assign_takes_the_rest_of_the_line(tt):
    tt.user_ns["issue"] = 12
    task = tt.run_cell("%tt_assign --tags x dev Fix issue #{issue}, it's $issue -- now").result
    assert task.description == "Fix issue #12, it's 12 -- now" and task.tags == ["x"]
    # IPython leaves the whole line alone when one {...} is not an expression it can fill
    raw = tt.run_cell('%tt_assign dev Fix #{issue}: json {"a": {not_defined}}').result
    assert raw.description == 'Fix #{issue}: json {"a": {not_defined}}'
    quoted = tt.run_cell('%tt_assign dev "a quoted task"').result
    assert quoted.description == "a quoted task"


def test_wait_timeout_is_a_one_line_error(tt, capsys):
    task = tt.run_cell("%tt_assign dev nobody runs this").result
    with pytest.raises(WaitTimeout):
        tt.run_cell(f"%tt_wait --task {task.id} --timeout 0.2")
    result = tt.run_cell_quietly(f"%tt_wait --task {task.id} --timeout 0.1")
    assert isinstance(result.error_in_exec, WaitTimeout)
    out = capsys.readouterr()
    assert "WaitTimeout" in out.out + out.err and "Traceback" not in out.out + out.err


def test_wait_shows_progress_and_records_the_end(tt, capsys):
    tt.run_cell("def slow(task):\n    import time\n    time.sleep(0.5)\n    return 'ok'\n")
    tt.run_cell("%tt_spawn slow --fn slow")
    task = tt.run_cell("%tt_assign slow wait for me").result
    capsys.readouterr()
    got = tt.run_cell(f"%tt_wait --task {task.short_id} --timeout 20").result
    assert isinstance(got, Task) and got.id == task.id and got.state.value == "completed"
    label = f"until task {task.short_id} finishes"  # a widget's saved text: the label only
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{label}: task {task.short_id} is ")        # assigned or running
    assert any(line.startswith(f"{label}: task {task.short_id} completed · 100% · ")
               and "elapsed" in line for line in out)
    tt.run_cell("%tt_assign slow and me")
    done = tt.run_cell("%tt_wait --all --timeout 20").result
    assert done.counts.tasks["completed"] == 2 and done.counts.total_tasks == 2
    assert repr(done).startswith("<demo all tasks finished after ")          # one line, not every task
    assert repr(done).endswith(": 2 tasks (2 completed) · 2 agents (1 starting, 1 idle)>")
    assert "until all tasks finish: 2/2 tasks finished · 100% · " in capsys.readouterr().out
    assert tt.run_cell("%tt_wait slow --timeout 10").result.name == "slow"
    assert "until slow is idle: slow is idle" in capsys.readouterr().out
    tt.run_cell("%tt_assign dev nobody runs this")
    with pytest.raises(WaitTimeout, match=r"^Timed out after 0\.3s waiting for "):
        tt.run_cell("%tt_wait --all --timeout 0.3")
    assert "until all tasks finish: 2/3 tasks finished (timed out) · 66% · " in capsys.readouterr().out


@pytest.mark.parametrize("line", ["%tt_wait", "%tt_wait dev --all", "%tt_wait --task x --all",
                                  "%tt_wait --all --timeout soon", "%tt_wait --all --timeout -1"])
def test_wait_bad_input(tt, line):
    with pytest.raises(UsageError):
        tt.run_cell(line)


def test_watch_returns_a_short_summary_and_times_out(tt, capsys):
    done = tt.run_cell("%tt_watch --until done --timeout 5").result  # no tasks: done at once
    assert repr(done).startswith("<demo done after ") and repr(done).endswith(
        ": 0 tasks · 1 agent (1 starting)>")
    html = done._repr_html_()
    assert html.count("<tr>") == 2 and "done after" in html          # one small table
    assert done.frame().columns.equals(frames.status_columns())
    tt.run_cell("%tt_assign dev never done")
    with pytest.raises(WaitTimeout, match="not|waiting for the town to be done"):
        tt.run_cell("%tt_watch --timeout 0.3")
    out = capsys.readouterr().out
    assert "until done: 0/1 task done, 0 agents busy (timed out) · 0% · 00:00 elapsed" in out
    with pytest.raises(UsageError):
        tt.run_cell("%tt_watch --until forever")


# ------------------------------------------------------------------ frames


def test_frame_magics(tt):
    t1, _ = (tt.run_cell(f"%tt_assign dev task {i}").result for i in range(2))
    magics(tt).town.complete_task(t1.id, "ok")
    agents = tt.run_cell("%tt_agents -o ag").result
    assert agents.name.tolist() == ["dev"] and agents.inbox.tolist() == [2]
    assert tt.user_ns["ag"] is agents
    assert tt.run_cell("%tt_tasks --state completed").result.id.tolist() == [t1.id]
    assert len(tt.run_cell("%tt_tasks --agent dev").result) == 2
    with pytest.raises(ConfigError, match="Unknown task state 'finished'"):
        tt.run_cell("%tt_tasks --state finished")
    with pytest.raises(AgentNotFound):
        tt.run_cell("%tt_tasks --agent nobody")
    status = tt.run_cell("%tt_status").result
    assert status.loc["demo", ("tasks", "completed")] == 1
    assert status.loc["demo", ("agents", "starting")] == 1
    history = tt.run_cell("%tt_history -n 2").result
    assert history.type.tolist() == ["task_assigned", "task_completed"]
    events = tt.run_cell("%tt_events -n 2").result
    assert events.type.tolist() == ["agent_spawned", "task_assigned"]
    after = tt.run_cell(f"%tt_events --after {events.id.iloc[-1]}").result
    assert after.type.tolist() == ["task_assigned", "task_completed"]
    assert tt.run_cell("%tt_history --agent dev -n 1").result.type.tolist() == ["task_completed"]
    with pytest.raises(UsageError):
        tt.run_cell("%tt_events -n lots")


# ------------------------------------------------------------------ messages


def test_send_and_inbox(tt):
    tt.user_ns["what"] = "the report"
    msg = tt.run_cell("%tt_send --urgent --query dev Where's {what}?").result
    assert isinstance(msg, Message) and msg.text == "Where's the report?"
    tt.run_cell('%tt_send dev "quoted text"')
    with pytest.raises(UsageError, match="Options go before the text"):
        tt.run_cell("%tt_send --ack supervisor thanks --from dev")
    tt.run_cell("%tt_send --ack supervisor thanks")
    inbox = tt.run_cell("%tt_inbox dev").result
    assert inbox.text.tolist() == ["Where's the report?", "quoted text"]
    assert inbox.urgent.tolist() == [True, False] and inbox.type.tolist() == ["query", "task"]
    everyone = tt.run_cell("%tt_inbox --all -o box").result
    assert everyone.agent.tolist() == ["dev", "dev", "supervisor"]
    assert everyone.text.iloc[-1] == "thanks" and tt.user_ns["box"] is everyone
    tt.run_cell("%tt_send --info --from dev supervisor done")
    assert tt.run_cell("%tt_inbox supervisor").result.sender.tolist() == ["supervisor", "dev"]


def test_line_magics_ending_in_a_question_mark_run(tt, capsys):
    tt.user_ns["what"] = "the build"
    msg = tt.run_cell("%tt_send --query dev what is the status?").result
    assert isinstance(msg, Message) and msg.text == "what is the status?" and msg.type == "query"
    task = tt.run_cell("%tt_assign dev Is this right?").result
    assert isinstance(task, Task) and task.description == "Is this right?"
    later = tt.run_cell("%tt_backlog add Can we ship {what}??").result
    assert later.description == "Can we ship the build??"
    tt.run_cell("if True:\n    again = %tt_send dev inside a block, is it?\n")
    assert tt.user_ns["again"].text == "inside a block, is it?"
    kept = tt.run_cell('s = """\n%tt_send dev in a string?\n"""\ns').result
    assert kept == "\n%tt_send dev in a string?\n"                 # a string stays a string
    inbox = tt.run_cell("%tt_inbox dev").result
    assert inbox.type.tolist() == ["query", "task_assign", "task"]
    assert inbox.text[inbox.type != "task_assign"].tolist() == [
        "what is the status?", "inside a block, is it?"]
    assert [t.description for t in magics(tt).town.backlog()] == ["Can we ship the build??"]
    capsys.readouterr()
    for line in ("%tt_send?", "%tt_send??", "   %tt_send?"):      # still help, nothing sent
        tt.run_cell(line)
        assert "%tt_send [--urgent]" in capsys.readouterr().out, line
    assert len(tt.run_cell("%tt_inbox dev").result) == 3


@pytest.mark.parametrize("line, fixed, quoted", [
    ("%tt_send dev please rebase --urgent", "%tt_send --urgent dev please rebase",
     '%tt_send dev "please rebase --urgent"'),
    ("%tt_send --query dev ready? --ack -o m", "%tt_send --ack -o m --query dev ready?",
     '%tt_send --query dev "ready? --ack -o m"'),
    ("%tt_send dev it's done --from=dev", "%tt_send --from=dev dev it's done",
     '%tt_send dev "it\'s done --from=dev"'),
    ("%tt_assign dev write docs --tags docs", "%tt_assign --tags docs dev write docs",
     '%tt_assign dev "write docs --tags docs"'),
    ('%tt_assign dev say "hi" --wait', '%tt_assign --wait dev say "hi"',
     "%tt_assign dev 'say \"hi\" --wait'"),
    ("%tt_assign dev write docs --timeout", "%tt_assign --timeout D dev write docs",
     '%tt_assign dev "write docs --timeout"'),
    ("%tt_send dev it's \"done\" --urgent", "%tt_send --urgent dev it's \"done\"", None),
    ("%tt_backlog add --tags x triage -o t", "%tt_backlog -o t add --tags x triage",
     '%tt_backlog add --tags x "triage -o t"'),
])
def test_options_after_the_text_are_refused(tt, line, fixed, quoted):
    with pytest.raises(UsageError, match="Options go before the text") as err:
        tt.run_cell(line)
    message = str(err.value)
    assert "\n" not in message and f": {fixed}" in message
    assert (quoted is None) == ("quote" not in message) and (quoted is None or quoted in message)
    town = magics(tt).town
    assert town.inbox_counts([town.agent("dev").id]) == {town.agent("dev").id: 0}
    assert tt.run_cell("%tt_tasks").result.empty and "m" not in tt.user_ns and "t" not in tt.user_ns


def test_option_words_in_quoted_or_explicit_text_stay_text(tt):
    assert tt.run_cell('%tt_send dev "please rebase --urgent"').result.text == "please rebase --urgent"
    assert tt.run_cell("%tt_send dev -- rebase --urgent").result.text == "rebase --urgent"
    assert tt.run_cell("%tt_send dev use --force").result.text == "use --force"  # not its option
    task = tt.run_cell("%tt_assign dev 'tag it --tags x'").result
    assert task.description == "tag it --tags x" and task.tags == []
    queued = tt.run_cell('%tt_backlog add "later -o x"').result
    assert queued.description == "later -o x"
    tt.run_cell("%tt_backlog list -o bl")                  # other actions: options anywhere
    assert tt.user_ns["bl"].id.tolist() == [queued.id]
    assert tt.run_cell(f"%tt_backlog claim {queued.short_id} dev -o c").result.id == queued.id


def test_text_starting_with_a_dash_keeps_its_first_word(tt):
    assert tt.run_cell("%tt_send dev -5 degrees outside").result.text == "-5 degrees outside"
    urgent = tt.run_cell("%tt_send --urgent dev -v is verbose -o msg2 is text").result
    assert urgent.text == "-v is verbose -o msg2 is text" and "msg2" not in tt.user_ns
    assert tt.run_cell("%tt_assign dev -1 is the answer").result.description == "-1 is the answer"
    assert tt.run_cell("%tt_backlog add -3 bugs left").result.description == "-3 bugs left"
    tagged = tt.run_cell("%tt_backlog add --tags ops --- a rule").result
    assert tagged.description == "--- a rule" and tagged.tags == ["ops"]
    with pytest.raises(UsageError, match="unrecognized arguments: --bogus"):
        tt.run_cell("%tt_send --bogus dev hi")
    inbox = tt.run_cell("%tt_inbox dev").result
    assert inbox.text[inbox.type == "task"].tolist() == [
        "-v is verbose -o msg2 is text", "-5 degrees outside"]
    assert inbox.urgent.tolist() == [True, False, False]


@pytest.mark.parametrize("line, error", [
    ("%tt_send", UsageError),
    ("%tt_send dev", UsageError),
    ("%tt_send dev    ", UsageError),
    ("%tt_send --query --info dev hi", UsageError),
    ("%tt_send nobody hi", AgentNotFound),
    ("%tt_send --from nobody dev hi", AgentNotFound),
    ("%tt_inbox", UsageError),
    ("%tt_inbox dev --all", UsageError),
    ("%tt_inbox nobody", AgentNotFound),
])
def test_send_and_inbox_bad_input(tt, line, error):
    with pytest.raises(error):
        tt.run_cell(line)
    assert tt.run_cell("%tt_inbox --all").result.empty


# ------------------------------------------------------------------ backlog


def test_backlog_magics(tt):
    a = tt.run_cell("%tt_backlog add --tags ops,urgent Triage it's {braces}").result
    assert a.description == "Triage it's {braces}" and a.tags == ["ops", "urgent"]
    b = tt.run_cell("%tt_backlog add second").result
    c = tt.run_cell("%tt_backlog add third").result
    assert tt.run_cell("%tt_backlog list").result.id.tolist() == [a.id, b.id, c.id]
    claimed = tt.run_cell(f"%tt_backlog claim {a.short_id} dev").result
    assert claimed.state.value == "assigned"
    removed = tt.run_cell(f"%tt_backlog remove {c.id}").result
    assert removed.id == c.id
    rest = tt.run_cell("%tt_backlog assign-all dev -o moved").result
    assert rest.id.tolist() == [b.id] and rest.agent.tolist() == ["dev"]
    assert tt.run_cell("%tt_backlog list").result.empty


@pytest.mark.parametrize("line, error", [
    ("%tt_backlog", UsageError),
    ("%tt_backlog pop", UsageError),
    ("%tt_backlog add", UsageError),
    ("%tt_backlog add --tags x", UsageError),
    ("%tt_backlog list --tags x", UsageError),
    ("%tt_backlog claim", UsageError),
    ("%tt_backlog claim onlyone", UsageError),
    ("%tt_backlog assign-all", UsageError),
    ("%tt_backlog remove", UsageError),
])
def test_backlog_bad_input(tt, line, error):
    with pytest.raises(error):
        tt.run_cell(line)


def test_backlog_claim_to_unknown_agent_keeps_the_task(tt):
    task = tt.run_cell("%tt_backlog add keep me").result
    with pytest.raises(AgentNotFound):
        tt.run_cell(f"%tt_backlog claim {task.id} nobody")
    assert tt.run_cell("%tt_backlog list").result.id.tolist() == [task.id]


# ------------------------------------------------------------------ view, reprs, completion, reload


def test_view_magic_returns_a_live_view(tt):
    with capture_output() as shown:
        view = tt.run_cell("%tt_view -o v").result
    assert view.running and tt.user_ns["v"] is view
    assert "dev" in view.agents_grid.html()
    [output] = shown.outputs  # shown once, as a display (its snapshot can be refreshed)
    assert {"text/plain", "text/html", "application/vnd.jupyter.widget-view+json"} <= set(output.data)
    assert "dev" in output.data["text/html"]
    view.close()
    assert not view.running


def test_timeline_magic(tt):
    tt.run_cell("def quick(task):\n    return 'ok'\n")
    tt.run_cell("%tt_spawn quick --fn quick")
    tt.run_cell("%%tt_assign quick --wait --timeout 20\none")
    tl = tt.run_cell("%tt_timeline --last 10m -o tl").result
    assert tt.user_ns["tl"] is tl and repr(tl) == "<Timeline: 1 task on 1 agent>"
    assert tl.frame.state.tolist() == ["completed"] and tl.frame.agent.tolist() == ["quick"]
    assert tl._repr_mimebundle_()["image/png"].startswith(b"\x89PNG")
    assert len(tt.run_cell("%tt_timeline").result.frame) == 1
    with pytest.raises(UsageError, match="--last 'soon'"):
        tt.run_cell("%tt_timeline --last soon")


def test_assigning_to_a_paused_or_stopped_agent_warns(tt, capsys):
    tt.run_cell("%tt_interrupt dev")
    capsys.readouterr()
    tt.run_cell("%tt_assign dev waits")
    assert capsys.readouterr().err == ("Note: dev is paused, so the task waits until it is resumed "
                                       "(%tt_resume dev).\n")
    tt.run_cell("%tt_kill dev")
    tt.run_cell("%%tt_assign dev\nnever runs")
    assert "dev is stopped, so nothing runs the task until it is restarted" in capsys.readouterr().err
    tt.run_cell("%tt_spawn ops --no-start")
    tt.run_cell("%tt_assign ops fine")
    assert capsys.readouterr().err == ""


def test_rerunning_view_stops_the_previous_watcher(tt):
    first = tt.run_cell("%tt_view").result
    second = tt.run_cell("%tt_view").result
    assert second.running and not first.running and magics(tt).views == [second]
    second.close()


def test_records_have_short_text_and_html_reprs(tt):
    agent = tt.run_cell("%tt_kill dev").result
    data, _ = tt.display_formatter.format(agent)
    assert data["text/plain"] == f"<Agent dev ({agent.short_id}) stopped>"
    assert "<table>" in data["text/html"] and "stopped" in data["text/html"]
    task = tt.run_cell("%tt_assign dev <b>bold</b> text").result
    data, _ = tt.display_formatter.format(task)
    assert data["text/plain"].startswith(f"<Task {task.short_id} assigned:")
    assert "&lt;b&gt;bold" in data["text/html"]  # escaped
    data, _ = tt.display_formatter.format(tt.run_cell("%tt_send dev hi").result)
    assert data["text/plain"].startswith("<Message task to")


def test_errors_print_one_line_and_still_fail_the_cell(tt, capsys):
    result = tt.run_cell_quietly("%tt_kill nobody")
    assert isinstance(result.error_in_exec, AgentNotFound)
    assert isinstance(result.error_in_exec, TinytownError)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "AgentNotFound" in text and "No agent 'nobody'" in text and "Traceback" not in text


def test_dead_server_is_one_line_and_still_fails_the_cell(tt, capsys):
    from tinytown_nb.core.errors import RedisUnavailable

    town = magics(tt).town
    town.server.stop()
    try:
        for cell in ("%tt_agents", "%tt_status", "%tt_assign dev x", "%tt_spawn qa --no-start"):
            result = tt.run_cell_quietly(cell)
            assert isinstance(result.error_in_exec, RedisUnavailable), cell
            out = capsys.readouterr()
            text = (out.out + out.err).strip()
            assert "Traceback" not in text and "is unreachable" in text and town.url in text, text
    finally:
        Town.connect(town.root).disconnect()  # restarts the server for the fixture's shutdown


def test_bad_event_ranges_are_one_line_errors(tt):
    with pytest.raises(ConfigError, match="after must be an event id"):
        tt.run_cell("%tt_events --after last")
    with pytest.raises(ConfigError, match="n must be a whole number >= 1"):
        tt.run_cell("%tt_history -n 0")
    assert len(tt.run_cell("%tt_events --after 0").result) >= 1


def complete(ip, line: str) -> list[str]:
    with provisionalcompleter():
        return sorted({c.text for c in ip.Completer.completions(line, len(line))})


def test_completion_offers_cached_agent_names_without_redis(tt):
    tt.run_cell("%tt_spawn deploy --no-start")
    task = tt.run_cell("%tt_assign dev some work").result
    assert complete(tt, "%tt_kill de") == ["deploy", "dev"]
    assert complete(tt, "tt_kill de") == ["deploy", "dev"]  # automagic spelling
    assert complete(tt, "%tt_assign ") == ["deploy", "dev"]  # no Python keywords or names
    assert "deploy" not in complete(tt, "%tt_assign dev de")  # free text: no names of ours
    assert complete(tt, "%tt_tasks --agent d") == ["deploy", "dev"]
    assert complete(tt, "%tt_tasks --state r") == ["running"]
    assert complete(tt, "%%tt_assign d") == ["deploy", "dev"]
    assert complete(tt, "%tt_send s") == ["supervisor"]
    assert complete(tt, "%tt_backlog cl") == ["claim"]
    assert complete(tt, "%tt_log ") == [task.short_id]       # a task id where a task is expected
    assert complete(tt, "%tt_wait --task ") == [task.short_id]
    assert "--urgent" in complete(tt, "%tt_send --u")
    assert complete(tt, "x = 1; %tt_") != []                   # other lines: IPython's own
    town = magics(tt).town
    town.shutdown()  # Redis gone: completion still answers from the cache
    magics(tt).towns.clear()
    assert complete(tt, "%tt_resume dep") == ["deploy"]


def test_reload_ext_is_clean(tt):
    view = tt.run_cell("%tt_view").result
    old = magics(tt)
    town = old.town
    try:
        tt.run_cell("%reload_ext tinytown_nb")
        assert not view.running                       # threads stopped
        new = magics(tt)
        assert new is not old and old not in tt.configurables and new in tt.configurables
        assert sum(isinstance(c, TinytownMagics) for c in tt.configurables) == 1
        assert sum(getattr(m, "matcher_identifier", "") == "tinytown_nb"
                   for m in tt.Completer.custom_matchers) == 1  # no duplicate completers
        assert tt.input_transformers_cleanup.count(question_mark_magics) == 1
        assert new.town is None
        with pytest.raises(ConfigError, match="Run %tt_init"):
            tt.run_cell("%tt_agents")
        tt.run_cell(f"%tt_init {town.root}")          # the same town, reconnected
        assert tt.run_cell("%tt_agents").result.name.tolist() == ["dev"]
    finally:
        if town.root not in magics(tt).towns:        # else the fixture shuts it down
            town.shutdown()


def test_unload_removes_magics_and_reprs(ip):
    formatter = ip.display_formatter.formatters["text/html"]
    plain = ip.display_formatter.formatters["text/plain"]
    assert formatter.lookup_by_type(Agent) and formatter.lookup_by_type(Town)
    assert plain.lookup_by_type(Town) and question_mark_magics in ip.input_transformers_cleanup
    ip.run_line_magic("unload_ext", "tinytown_nb")
    with pytest.raises(KeyError):
        formatter.lookup_by_type(Agent)
    for each in (formatter, plain):
        with pytest.raises(KeyError):
            each.lookup_by_type(Town)
    assert question_mark_magics not in ip.input_transformers_cleanup
    assert "tt_init" not in ip.magics_manager.magics["line"]
    ip.run_line_magic("load_ext", "tinytown_nb")  # the fixture unloads again


def test_assign_timeout_and_retries_reach_the_task(tt):
    task = tt.run_cell("%%tt_assign dev --timeout 20m --retries 2 --retry-delay 30s\nwork").result
    town = magics(tt).town
    assert town.redis.hgetall(town.keys.taskopts(task.id)) == {
        "id": task.id, "timeout": "1200", "retries": "2", "retry_delay": "30"}
    queued = tt.run_cell("%tt_backlog add --timeout 90 later").result
    assert town.redis.hget(town.keys.taskopts(queued.id), "timeout") == "90"
    with pytest.raises(UsageError, match="--timeout only applies to %tt_backlog add"):
        tt.run_cell("%tt_backlog list --timeout 5")
    agent = tt.run_cell("%tt_spawn timed --cli cat --no-start --task-timeout 1h").result
    assert agent.name == "timed"
