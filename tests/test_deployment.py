"""compose.yaml and the local stack run the same service commands, and compose is the secure
deployment. Running it in containers is tests/deploy/test_compose.py (``make test-deploy``)."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path

import bcrypt
import yaml

from flowrelay.credentials import Secrets
from flowrelay.natsconfig import ROUTE_USER
from flowrelay.stack import SERVICE_COMMANDS, resolve

REPO = Path(__file__).resolve().parents[1]

#: The NATS user each service connects as, and the compose secret holding its password.
SERVICE_USERS = {"api": "api", "executor": "executor", "suggester": "suggester"}


def _compose(name: str = "compose.yaml") -> dict:
    return yaml.safe_load((REPO / name).read_text())


def test_compose_runs_the_same_commands_as_the_tests() -> None:
    services = _compose()["services"]
    for name, command in SERVICE_COMMANDS.items():
        assert services[name]["command"][: len(command)] == command, name


def test_compose_has_nats_from_its_generated_config_a_volume_and_two_executors() -> None:
    compose = _compose()
    nats = compose["services"]["nats"]
    assert nats["image"].endswith(":-nats:2.15-alpine}")  # the official image unless told otherwise
    assert nats["command"][:2] == ["-c", "/run/secrets/nats_conf"]  # users, JetStream, no anonymous
    assert nats["secrets"] == ["nats_conf"]
    assert compose["secrets"]["nats_conf"]["file"].endswith("/nats.conf")
    assert any(v.endswith(":/data") for v in nats["volumes"])
    assert compose["services"]["executor"]["deploy"]["replicas"] == 2
    for name in SERVICE_USERS:
        assert compose["services"][name]["environment"]["FLOWRELAY_NATS_URL"] == "nats://nats:4222"


def test_each_service_gets_only_its_own_secrets() -> None:
    compose = _compose()
    for name, user in SERVICE_USERS.items():
        service = compose["services"][name]
        env = service["environment"]
        secret = f"{user}_password"
        assert env["FLOWRELAY_NATS_USER"] == user
        assert env["FLOWRELAY_NATS_PASSWORD_FILE"] == f"/run/secrets/{secret}"
        assert compose["secrets"][secret]["file"].endswith(f"/nats/{user}.password")
        assert service["secrets"] == ([secret, "admin_key"] if name == "api" else [secret]), name
        assert "FLOWRELAY_NATS_PASSWORD" not in env
    assert compose["services"]["api"]["environment"]["FLOWRELAY_BOOTSTRAP_KEY_FILE"] == "/run/secrets/admin_key"
    assert "secrets" not in compose["services"]["scripted-model"]


def test_published_ports_are_on_loopback_unless_told_otherwise() -> None:
    for name in ("compose.yaml", "deploy/compose.cluster.yaml"):
        for service, spec in _compose(name)["services"].items():
            for port in spec.get("ports", []):
                assert re.fullmatch(r"\$\{FLOWRELAY_\w+_BIND:-127\.0\.0\.1:\d+\}:\d+", port), (name, service, port)


def test_metrics_ports_are_exposed_to_the_network_not_published() -> None:
    services = _compose()["services"]
    for name, port in (("executor", "9101"), ("suggester", "9102")):
        assert services[name]["environment"]["FLOWRELAY_METRICS_HOST"] == "0.0.0.0"
        assert services[name]["expose"] == [port]
        assert not services[name].get("ports")


def _secrets_init(directory: Path, *extra: str) -> None:
    subprocess.run([*resolve(["flowrelay"]), "secrets", "init", str(directory), "--nats-config",
                    str(directory / "nats.conf"), *extra], check=True, capture_output=True, timeout=60)


def test_secrets_for_containers_are_readable_inside_a_private_directory(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    _secrets_init(secrets, "--container-readable")
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    assert stat.S_IMODE((secrets / "nats").stat().st_mode) == 0o700
    for file in [secrets / "admin.key", *(secrets / "nats").glob("*.password")]:
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file
    assert stat.S_IMODE((secrets / "nats.conf").stat().st_mode) == 0o600
    _secrets_init(secrets)  # without the flag again: back to the owner's alone, same secrets
    assert stat.S_IMODE((secrets / "admin.key").stat().st_mode) == 0o600


def test_cluster_configs_route_to_each_other_with_their_own_credentials(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    _secrets_init(secrets, "--nats-cluster", "nats,nats-2,nats-3")
    route_password = Secrets(secrets).password(ROUTE_USER)
    configs = {name: json.loads((secrets / f"{name}.conf").read_text()) for name in ("nats", "nats-2", "nats-3")}
    for name, config in configs.items():
        assert config["server_name"] == name
        cluster = config["cluster"]
        assert cluster["authorization"]["user"] == ROUTE_USER
        assert bcrypt.checkpw(route_password.encode(), cluster["authorization"]["password"].encode())
        peers = {f"nats-route://{ROUTE_USER}:{route_password}@{peer}:6222" for peer in configs if peer != name}
        assert set(cluster["routes"]) == peers
        users = {user["user"] for user in config["authorization"]["users"]}
        assert users == {"api", "executor", "suggester", "operator"}  # the route user is no client
        assert "no_auth_user" not in config
        assert config["jetstream"]["sync_interval"] == "always"  # like every NATS flowrelay configures


def _pins(lock: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """``name -> (version, hashes)`` of a hashed requirements file."""
    pins: dict[str, tuple[str, frozenset[str]]] = {}
    for entry in re.split(r"\n(?=\S)", lock.read_text()):
        if match := re.match(r"([A-Za-z0-9_.-]+)==(\S+)", entry):
            pins[_normalized(match[1])] = (match[2], frozenset(re.findall(r"--hash=(sha256:\w+)", entry)))
    return pins


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _runtime_closure(root: str) -> set[str]:
    """Every distribution ``root`` needs at run time (extras followed, markers evaluated here),
    read from the installed metadata: the dev group is not among them."""
    from importlib import metadata

    from packaging.requirements import Requirement

    extras_of: dict[str, frozenset[str]] = {}
    todo = [(root, frozenset[str]())]
    while todo:
        name, extras = todo.pop()
        key = _normalized(name)
        if key in extras_of and extras <= extras_of[key]:
            continue
        extras_of[key] = extras_of.get(key, frozenset()) | extras
        for raw in metadata.requires(name) or []:
            requirement = Requirement(raw)
            environments = [{"extra": extra} for extra in extras_of[key] or {""}]
            if requirement.marker is None or any(requirement.marker.evaluate(env) for env in environments):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return set(extras_of) - {_normalized(root)}


def test_the_service_image_lock_is_the_dev_lock_without_the_dev_tools() -> None:
    # The API and suggester image installs locks/service/requirements.lock: exactly what
    # flowrelay needs at run time (a stale lock missing a new dependency breaks the image),
    # at the same versions and hashes as requirements.lock (what `make install` and the
    # tests run), and none of the dev group (pytest, playwright, ...).
    dev, service = _pins(REPO / "requirements.lock"), _pins(REPO / "locks" / "service" / "requirements.lock")
    assert set(service) == _runtime_closure("flowrelay")
    assert {name: dev[name] for name in service} == service
    assert not {"pytest", "playwright", "ruff", "hatchling", "schemathesis"} & set(service)
    assert "locks/service/requirements.lock" in (REPO / "Dockerfile").read_text()
