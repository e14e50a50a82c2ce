"""compose.yaml and the local stack run the same service commands; compose runs where it can."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from flowrelay.stack import SERVICE_COMMANDS

REPO = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def test_compose_runs_the_same_commands_as_the_tests() -> None:
    services = _compose()["services"]
    for name, command in SERVICE_COMMANDS.items():
        assert services[name]["command"][: len(command)] == command, name


def test_compose_has_nats_with_jetstream_a_volume_and_two_executors() -> None:
    compose = _compose()
    nats = compose["services"]["nats"]
    assert nats["image"].startswith("nats:")
    assert "-js" in nats["command"]
    assert any(v.endswith(":/data") for v in nats["volumes"])
    assert compose["services"]["executor"]["deploy"]["replicas"] == 2
    for name in ("api", "executor", "suggester"):
        assert compose["services"][name]["environment"]["FLOWRELAY_NATS_URL"] == "nats://nats:4222"


def _docker_engine() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


@pytest.mark.skipif(not _docker_engine(), reason="no Docker engine on this machine (docker client only)")
def test_compose_up_runs_one_workflow() -> None:  # pragma: no cover - needs a Docker engine
    import json
    import time
    import urllib.request

    subprocess.run(["docker", "compose", "up", "-d", "--build", "--wait"], cwd=REPO, check=True, timeout=900)
    try:
        body = json.dumps({"workflow": json.loads((REPO / "examples" / "simple.json").read_text())["workflow"],
                           "input": "compose"}).encode()
        request = urllib.request.Request("http://127.0.0.1:8000/execute", data=body,
                                         headers={"content-type": "application/json"})
        for _ in range(60):
            try:
                answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
                break
            except OSError:
                time.sleep(1)
        assert answer["output"] == "echo: compose"
    finally:
        subprocess.run(["docker", "compose", "down", "-v"], cwd=REPO, timeout=300)
