"""The compose deployment is well-formed: services, images, ports, env, health checks, volumes.

``docker compose config`` is run too where the compose plugin exists; this machine has only the
docker client, so the YAML is checked directly.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from agentrl.configs import AgentTrainingConfig

COMPOSE = Path(__file__).resolve().parents[2] / "compose"
SERVICES = {"redis", "mongodb", "minio", "flower", "worker", "beat", "trainer"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def _env_example() -> dict[str, str]:
    pairs = [
        line.split("=", 1)
        for line in (COMPOSE / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return {k: v for k, v in pairs}


def test_services_images_ports_and_health(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    assert services["redis"]["image"].startswith("redis:")
    assert services["mongodb"]["image"].startswith("mongo:")
    assert services["minio"]["image"].startswith("minio/minio")
    assert "6379:6379" in services["redis"]["ports"]
    assert "27017:27017" in services["mongodb"]["ports"]
    assert "5555:5555" in services["flower"]["ports"]
    for name in ("redis", "mongodb", "minio", "flower", "worker", "trainer"):
        assert services[name]["healthcheck"]["test"], name
    for name in ("flower", "worker", "beat", "trainer"):
        assert services[name]["build"]["dockerfile"] == "compose/Dockerfile"
    assert (COMPOSE / "Dockerfile").exists()
    assert set(compose["volumes"]) >= {"redis-data", "mongo-data", "minio-data", "runs"}


def test_commands_use_the_celery_app_and_auth(compose: dict) -> None:
    services = compose["services"]
    assert services["worker"]["command"][:4] == ["celery", "-A", "agentrl", "worker"]
    assert "sampling,evaluation" in services["worker"]["command"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "agentrl", "beat"]
    assert any(a.startswith("--basic-auth=") for a in services["flower"]["command"])
    mongo_env = services["mongodb"]["environment"]
    assert mongo_env["MONGO_INITDB_ROOT_USERNAME"] and mongo_env["MONGO_INITDB_ROOT_PASSWORD"]
    assert "--requirepass" in services["redis"]["command"]


def test_trainer_reserves_gpus_and_uses_sglang(compose: dict) -> None:
    trainer = compose["services"]["trainer"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert trainer["environment"]["AGENTRL_ENGINE"] == "sglang"
    assert trainer["build"]["args"]["AGENTRL_EXTRAS"] == "gpu"


def test_every_variable_is_in_env_example_and_env_names_real_fields(compose: dict) -> None:
    text = (COMPOSE / "docker-compose.yml").read_text()
    used = {m.group(1) for m in re.finditer(r"\$\{([A-Z_]+)(?::-[^}]*)?\}", text)}
    defaulted = {m.group(1) for m in re.finditer(r"\$\{([A-Z_]+):-[^}]*\}", text)}
    assert used - defaulted <= set(_env_example())
    fields = set(AgentTrainingConfig.model_fields)
    for key in compose["services"]["worker"]["environment"]:
        assert key.startswith("AGENTRL_") and key[len("AGENTRL_"):].lower() in fields | {"config"}


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_where_available(tmp_path: Path) -> None:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed here")
    env = tmp_path / ".env"
    env.write_text((COMPOSE / ".env.example").read_text())
    result = subprocess.run(
        ["docker", "compose", "--env-file", str(env), "-f", str(COMPOSE / "docker-compose.yml"),
         "config", "-q"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
