"""``flowrelay up``: the whole stack from one command, offline, and nothing left behind."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import httpx
import nats
import nats.errors
import psutil
import pytest
from flowrelay_testkit import free_port, one_agent, run_body

from flowrelay.stack import ServiceProcess


def _up(data_dir: Path, api_port: int, nats_port: int, env: dict[str, str]) -> ServiceProcess:
    argv = [str(Path(sys.executable).parent / "flowrelay"), "up", "--data-dir", str(data_dir),
            "--api-port", str(api_port), "--nats-port", str(nats_port), "--scripted-port", "0", "--workers", "1"]
    return ServiceProcess("up", argv, env=env, log_path=data_dir / "up-console.log").start()


def _tree(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    import os

    keys = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "MISTRAL_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")
    return {k: v for k, v in os.environ.items() if k not in keys and not k.startswith("FLOWRELAY_")} | {"COLUMNS": "200"}


async def test_up_runs_offline_and_stops_cleanly_keeping_its_store(tmp_path: Path, clean_env: dict[str, str]) -> None:
    api_port, nats_port = free_port(), free_port()
    up = _up(tmp_path / "data", api_port, nats_port, clean_env)
    try:
        up.wait_for("Press Ctrl-C to stop", timeout=180)  # the last line of the summary
        console = up.output()
        assert "SCRIPTED" in console and f"http://127.0.0.1:{api_port}" in console
        assert f"nats://127.0.0.1:{nats_port}" in console
        children = _tree(up.pid)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        for part in ("nats-server", "flowrelay-api", "flowrelay-executor", "flowrelay-suggester", "flowrelay-scripted-model"):
            assert part in names, f"{part} not among {names}"
        secrets = tmp_path / "data" / "secrets"
        key = (secrets / "admin.key").read_text().strip()
        assert str(secrets / "admin.key") in console and key not in console
        for file in [secrets / "admin.key", *sorted((secrets / "nats").iterdir())]:
            assert file.stat().st_mode & 0o777 == 0o600, file
        assert secrets.stat().st_mode & 0o777 == 0o700
        config = json.loads((tmp_path / "data" / "nats" / "nats.conf").read_text())
        assert config["jetstream"]["sync_interval"] == "always"  # acked means on disk (see natsconfig)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=60) as api:
            assert (await api.post("/execute", json=run_body(one_agent(), "anonymous"))).status_code == 401
            result = (await api.post("/execute", json=run_body(one_agent(), "hello up"),
                                     headers={"Authorization": f"Bearer {key}"})).json()
        assert result["output"] == "echo: hello up"
        assert f"http://127.0.0.1:{api_port}/ui/" in console
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as browser_like:
            assert "app.js" in (await browser_like.get("/ui/")).text  # the console needs no key to load
        run_id = result["run_id"]
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(f"nats://127.0.0.1:{nats_port}", allow_reconnect=False, max_reconnect_attempts=0)
    finally:
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(60) == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], f"orphans: {alive}"

    again = _up(tmp_path / "data", api_port, nats_port, clean_env)
    try:
        again.wait_for("Press Ctrl-C to stop", timeout=180)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=30,
                                     headers={"Authorization": f"Bearer {key}"}) as api:
            record = (await api.get(f"/runs/{run_id}")).json()
        assert record["status"] == "succeeded", "the run record survived the restart"
    finally:
        again.process.send_signal(signal.SIGINT)
        assert again.process.wait(60) == 0
