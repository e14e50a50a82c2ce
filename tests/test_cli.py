"""The ``flowrelay`` CLI against a live ``flowrelay up`` (real supervisor, real services).

One stack for the module; the test that SIGKILLs an executor runs last. Every command is
run as a user runs it: the console script in a child process, its output captured.
"""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import select
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import psutil
import pytest
from flowrelay_testkit import BIN, REPO, UpStack, free_port, one_agent, run_body

pytestmark = pytest.mark.timeout(300)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

#: Upper bound for things that take well under a second when the machine is idle.
WAIT_S = 60.0


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpStack]:
    # ack wait 4 s: runs of a killed executor come back quickly to its replacement. tinyagent
    # only, like the suite's shared stack: the framework matrix has stacks of its own, and a
    # restarted executor does not self-check six frameworks again.
    env = {"FLOWRELAY_ACK_WAIT_S": "4", "FLOWRELAY_FRAMEWORKS": "tinyagent"}
    stack = UpStack(tmp_path_factory.mktemp("up") / "data", env=env).start()
    yield stack
    assert stack.stop() == 0, stack.process.output() if stack.process else ""


def workflow_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"wf-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(run_body(one_agent(), text)))
    return path


def submit(live: UpStack, text: str) -> str:
    response = httpx.post(f"{live.api_url}/runs", json=run_body(one_agent(), text), headers=live.auth_headers,
                          timeout=30)
    assert response.status_code == 202, response.text
    return str(response.json()["run_id"])


def record(live: UpStack, run_id: str) -> dict:
    return httpx.get(f"{live.api_url}/runs/{run_id}", headers=live.auth_headers, timeout=30).json()


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- status, runs, follow, cancel --------------------------------------------------------------


def test_status_shows_services_executors_frameworks_and_queue(live: UpStack) -> None:
    shown = live.cli("status")
    assert shown.returncode == 0, shown.stderr
    for part in ("nats", "api", "executor-1", "suggester", "scripted-model", "running", "tinyagent", "queue"):
        assert part in shown.stdout, part
    report = json.loads(live.cli("status", "--json").stdout)
    assert report["health"]["status"] == "ok"
    services = {s["name"]: s for s in report["supervisor"]["services"]}
    assert set(services) == {"nats", "scripted-model", "executor-1", "suggester", "api"}
    assert all(s["state"] == "running" and s["pid"] for s in services.values())
    assert services["executor-1"]["metrics"].startswith("http://127.0.0.1:")
    assert report["frameworks"] == ["tinyagent"] and set(report["queue"]) == {"waiting", "held"}
    (executor,) = report["executors"]
    assert str(executor["metrics_port"]) in services["executor-1"]["metrics"]


def test_run_follow_runs_and_cancel(live: UpStack, tmp_path: Path) -> None:
    followed = live.cli("run", str(workflow_file(tmp_path, "hello cli")), "--follow", "--json")
    assert followed.returncode == 0, followed.stderr
    events = [json.loads(line) for line in followed.stdout.splitlines()]
    assert events[0]["type"] == "run.started" and events[-1]["type"] == "run.completed"
    run_id = events[0]["run_id"]
    assert events[-1]["data"]["output"] == "echo: hello cli"

    listed = json.loads(live.cli("runs", "--json", "--limit", "5").stdout)
    assert run_id in [r["run_id"] for r in listed["runs"]]
    assert run_id in live.cli("runs").stdout

    replay = live.cli("follow", run_id)
    assert replay.returncode == 0 and "run.completed" in replay.stdout and "echo: hello cli" in replay.stdout

    slow = submit(live, "#delay=60 until cancelled")
    live.wait_event(slow, "run.started")
    cancelled = live.cli("cancel", slow)
    assert cancelled.returncode == 0 and "asked to stop" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    assert live.wait_end(slow)["status"] == "cancelled"
    after = live.cli("follow", slow)
    assert after.returncode == 1 and "run.cancelled" in after.stdout
    assert "already ended (cancelled)" in one_error_line(live.cli("cancel", slow))


def test_errors_are_one_line_without_traceback(live: UpStack, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    down = live.cli("status", env={"FLOWRELAY_API_URL": closed})  # the supervisor's view is still shown
    assert down.returncode == 1 and "connection refused" in down.stdout and "executor-1" in down.stdout
    assert "Traceback" not in down.stdout + down.stderr
    for args in (["runs"], ["run", str(workflow_file(tmp_path, "x")), "--follow"], ["cancel", "01KX"]):
        line = one_error_line(live.cli(*args, env={"FLOWRELAY_API_URL": closed}))
        assert "connection refused" in line and "flowrelay up" in line, line
    assert "no run 01KAAAAAAAAAAAAAAAAAAAAAAA" in one_error_line(live.cli("follow", "01KAAAAAAAAAAAAAAAAAAAAAAA"))
    bad = "frk_aaaaaaaaaaaa_" + "A" * 43
    line = one_error_line(live.cli("runs", env={"FLOWRELAY_API_KEY": bad}))
    assert "refused the key (from FLOWRELAY_API_KEY)" in line and bad not in line
    missing = one_error_line(live.cli("runs", env={"FLOWRELAY_DATA_DIR": str(tmp_path / "nowhere")}))
    assert "no API key" in missing


# -- Ctrl-C while following --------------------------------------------------------------------


def test_ctrl_c_on_run_follow_asks_whether_to_cancel(live: UpStack, tmp_path: Path) -> None:
    """In a terminal (a pty), Ctrl-C asks; answering y cancels the run."""
    argv = [str(BIN / "flowrelay"), "run", str(workflow_file(tmp_path, "#delay=60 interrupt me")), "--follow"]
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=live.cli_env(),
                            start_new_session=True)
    os.close(slave)
    screen = ""

    def read_until(pattern: str) -> re.Match[str]:
        nonlocal screen
        deadline = time.monotonic() + WAIT_S
        while not (match := re.search(pattern, _ANSI.sub("", screen))):
            assert time.monotonic() < deadline, f"no {pattern!r} in {_ANSI.sub('', screen)[-2000:]!r}"
            if select.select([master], [], [], 1)[0]:
                try:
                    screen += os.read(master, 4096).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    pass
        return match

    try:
        run_id = read_until(r"run (\w{26}) queued").group(1)
        read_until(r"run\.started")
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        read_until(rf"Cancel run {run_id}\?")
        os.write(master, b"y\n")
        read_until("cancel requested")
        assert proc.wait(WAIT_S) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert "Traceback" not in screen
    assert live.wait_end(run_id)["status"] == "cancelled"


def test_ctrl_c_without_a_terminal_cancels_only_when_told(live: UpStack, tmp_path: Path) -> None:
    def interrupt(*flags: str) -> tuple[str, str]:
        argv = [str(BIN / "flowrelay"), "run", str(workflow_file(tmp_path, "#delay=60 no tty")), "--follow", *flags]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=live.cli_env(), start_new_session=True)
        assert proc.stdout is not None
        out = ""
        while "run.started" not in out:
            line = proc.stdout.readline()
            assert line, f"ended before the run started: {out}{proc.stderr.read() if proc.stderr else ''}"
            out += line
        run_id = re.search(r"run (\w{26}) queued", out).group(1)  # type: ignore[union-attr]
        os.killpg(proc.pid, signal.SIGINT)
        rest, err = proc.communicate(timeout=WAIT_S)
        assert proc.returncode == 130 and "Traceback" not in rest + err
        return run_id, out + rest

    run_id, out = interrupt()
    assert f"flowrelay cancel {run_id}" in out and record(live, run_id)["status"] == "running"
    assert live.cli("cancel", run_id).returncode == 0

    run_id, out = interrupt("--cancel-on-exit")
    assert "cancel requested" in out
    assert live.wait_end(run_id)["status"] == "cancelled"


# -- logs -----------------------------------------------------------------------------------------


def test_logs_show_and_follow(live: UpStack) -> None:
    every = live.cli("logs", "-n", "3")
    assert every.returncode == 0
    for name in ("api", "executor-1", "suggester", "nats", "scripted-model"):
        assert re.search(rf"^\s*{name} \| ", every.stdout, re.M), name
    api_only = live.cli("logs", "api", "-n", "50")
    assert "Application startup complete" in api_only.stdout and " | " not in api_only.stdout
    assert "there are: api, executor-1" in one_error_line(live.cli("logs", "nope"))

    follower = subprocess.Popen([str(BIN / "flowrelay"), "logs", "suggester", "-f", "-n", "1"], stdout=subprocess.PIPE,
                                text=True, env=live.cli_env(), start_new_session=True)
    try:
        assert follower.stdout is not None
        lines = Lines(follower.stdout)
        assert lines.next(), "the last line so far: the follower is reading the file now"
        failed = submit(live, "#fail=401 for the suggester")
        while failed not in lines.next():  # the suggester logs its guidance
            pass
    finally:
        os.killpg(follower.pid, signal.SIGINT)
        assert follower.wait(WAIT_S) == 0


class Lines:
    """A child's output line by line, with a timeout instead of a hang."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self._queue.put(line) for line in stream], daemon=True).start()

    def next(self, timeout: float = WAIT_S) -> str:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output in {timeout} s") from None


# -- the Python client example of the README -------------------------------------------------------


def _readme_client_example() -> str:
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- client-example:start -->")[1].split("<!-- client-example:end -->")[0]
    return block.split("```python\n")[1].split("```")[0]


def test_the_readme_client_example_is_the_shipped_one() -> None:
    assert _readme_client_example() == (REPO / "examples" / "nats_client.py").read_text()


def test_the_python_client_example_runs_and_closes_cleanly(live: UpStack) -> None:
    tenant = f"ex{uuid.uuid4().hex[:6]}"
    created = live.cli("nats-user", "--tenant", tenant, "--submit")
    assert created.returncode == 0, created.stderr
    user = dict(line.split("=", 1) for line in created.stdout.splitlines())
    assert user["user"] == f"client-{tenant}"
    env = live.cli_env() | {"FLOWRELAY_TENANT": tenant, "FLOWRELAY_NATS_USER": user["user"],
                            "FLOWRELAY_NATS_PASSWORD_FILE": user["password_file"]}
    # ResourceWarnings shown: an unclosed connection or transport would appear on stderr
    result = subprocess.run([str(BIN / "python"), "-W", "default::ResourceWarning", str(REPO / "examples" / "nats_client.py")], capture_output=True,
                            text=True, timeout=120, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "succeeded echo: ping", result.stdout
    assert "run.completed" in result.stdout
    assert result.stderr == "", "the client closes without 'Task exception was never retrieved' or other noise"


# -- the supervisor -------------------------------------------------------------------------------


def test_a_second_up_on_the_same_data_dir_refuses_before_starting_nats(live: UpStack) -> None:
    nats_log = live.data_dir / "logs" / "nats.log"
    starts = nats_log.read_text().count("Starting nats-server")
    second = UpStack(live.data_dir)
    result = subprocess.run(second.argv, capture_output=True, text=True, timeout=WAIT_S, env=second.env)
    assert result.returncode == 1
    assert live.process is not None
    out = result.stdout + result.stderr
    assert f"already running on {live.data_dir} (pid {live.process.pid}, API on {live.api_url})" in out, out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1
    assert nats_log.read_text().count("Starting nats-server") == starts, "no second server touched the store"


def test_a_killed_executor_is_restarted_and_its_runs_finish(live: UpStack) -> None:
    assert live.process is not None
    runs = [submit(live, f"#delay=3 survive {i}") for i in range(3)]
    for run_id in runs:
        live.wait_event(run_id, "run.started")
    state = json.loads((live.data_dir / "up.json").read_text())
    (executor,) = [s for s in state["services"] if s["name"] == "executor-1"]
    mark = live.process.line_count
    victim = psutil.Process(executor["pid"])
    workers = victim.children(recursive=True)  # the fork server and the worker process
    assert workers
    victim.kill()

    live.process.wait_for(r"executor-1 exited with -9 \(SIGKILL\); restarting it in \d+ s", timeout=WAIT_S, after=mark)
    live.process.wait_for(r"executor-1 is back \(pid \d+, restart 1\)", timeout=240, after=mark)
    for run_id in runs:
        done = live.wait_end(run_id)
        assert done["status"] == "succeeded" and done["attempts"] == 2, done
    report = json.loads(live.cli("status", "--json").stdout)
    (restarted,) = [s for s in report["supervisor"]["services"] if s["name"] == "executor-1"]
    assert restarted["restarts"] == 1 and restarted["pid"] != executor["pid"] and restarted["state"] == "running"
    assert live.process.process is not None and live.process.process.poll() is None, "the stack keeps running"
    gone, alive = psutil.wait_procs(workers, timeout=WAIT_S)
    assert alive == [], "the killed executor's worker processes were stopped with it"
    log = (live.data_dir / "logs" / "executor-1.log").read_text(errors="replace")
    assert "Traceback" not in log, "an orphaned worker ends its runs quietly"


def test_a_killed_nats_server_is_restarted_and_the_services_reconnect(live: UpStack, tmp_path: Path) -> None:
    assert live.process is not None
    state = json.loads((live.data_dir / "up.json").read_text())
    (nats,) = [s for s in state["services"] if s["name"] == "nats"]
    mark = live.process.line_count
    psutil.Process(nats["pid"]).kill()
    live.process.wait_for(r"nats exited with -9 \(SIGKILL\); restarting it", timeout=WAIT_S, after=mark)
    live.process.wait_for(r"nats is back", timeout=WAIT_S, after=mark)
    deadline = time.monotonic() + WAIT_S
    # the API reconnects; /healthz is the only sign of it (nothing announces a reconnect)
    while httpx.get(f"{live.api_url}/healthz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the API did not reconnect"
        time.sleep(0.1)
    done = live.cli("run", str(workflow_file(tmp_path, "after nats came back")), "--follow", "--json", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["data"]["output"] == "echo: after nats came back"
    for log in (live.data_dir / "logs").glob("*.log"):  # the reconnect warnings included
        assert "\x1b[" not in log.read_text(errors="replace"), f"{log.name} has ANSI colour codes"
