"""Tests of docker-compose.yml without a Docker engine: ``docker-compose config`` validates it, and every
bpexp command a service runs names a real command with real options.

They run on a copy of the files compose needs, with .env made from .env.example.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import click
import pytest
import yaml
from sqlalchemy.engine import make_url

from bpexp.cli import cli

REPO = Path(__file__).resolve().parent.parent
COMPOSE = shutil.which("docker-compose")
pytestmark = pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed (.ci/run installs Debian's)")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """docker-compose.yml, deploy/ and experiments/ copied, with .env from .env.example."""
    root = tmp_path_factory.mktemp("compose")
    shutil.copy(REPO / "docker-compose.yml", root / "docker-compose.yml")
    shutil.copy(REPO / ".env.example", root / ".env")
    shutil.copytree(REPO / "deploy", root / "deploy")
    shutil.copytree(REPO / "experiments", root / "experiments")
    return root


@pytest.fixture(scope="module")
def resolved(project) -> dict:
    """The compose file as docker-compose resolves it (variables from .env filled in)."""
    done = subprocess.run([COMPOSE, "config"], cwd=project, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_docker_compose_config_accepts_the_file(project):
    done = subprocess.run([COMPOSE, "config", "-q"], cwd=project, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_missing_env_file_is_caught(project, tmp_path):
    # the check above is only worth something if config -q fails on a broken project
    shutil.copy(project / "docker-compose.yml", tmp_path / "docker-compose.yml")
    done = subprocess.run([COMPOSE, "config", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0


def bpexp_commands(resolved: dict) -> dict[str, list[str]]:
    """service → the argv of the bpexp command it runs (after ``sh -c``), for services that run bpexp."""
    found = {}
    for name, service in resolved["services"].items():
        command = service.get("command")
        if command is None:
            continue
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        if argv[:2] == ["sh", "-c"]:
            argv = shlex.split(argv[2])
        if argv and argv[0] == "bpexp":
            found[name] = argv[1:]
    return found


def test_every_bpexp_command_in_the_services_exists_with_its_options(resolved):
    commands = bpexp_commands(resolved)
    assert {"worker", "scheduler"} <= set(commands)
    for service, argv in commands.items():
        command: click.Command = cli
        rest = list(argv)
        while isinstance(command, click.Group):
            assert rest and rest[0] in command.commands, f"{service}: no command {rest[:1]} in {command.name}"
            command = command.commands[rest.pop(0)]
        known = {opt for param in command.params for opt in getattr(param, "opts", []) + getattr(param, "secondary_opts", [])}
        for token in rest:
            if token.startswith("--"):
                assert token.split("=", 1)[0] in known, f"{service}: {command.name} has no option {token}"
        # and the arguments parse as click would parse them (env references stand for any value)
        command.make_context(command.name, [t.replace("$BPEXP_STORAGE", "postgresql+psycopg://u@h/db") for t in rest], resilient_parsing=False)


def test_the_scheduler_serves_the_nightly_batch_on_a_cron_that_parses(resolved, project):
    from bpexp.batch import load_batch
    from bpexp.batch.scheduler import parse_cron

    argv = bpexp_commands(resolved)["scheduler"]
    assert argv[:2] == ["batch", "serve"]
    parse_cron(argv[argv.index("--cron") + 1])
    batch = load_batch(project / argv[2])  # the image copies experiments/ as it is here
    assert batch.name == "nightly"


def test_studies_and_ledger_are_not_in_mlflows_database(resolved):
    # MLflow and Optuna both keep an alembic_version table: one database cannot hold both
    mlflow = resolved["services"]["mlflow"]["command"]
    argv = shlex.split(mlflow) if isinstance(mlflow, str) else mlflow
    backend = make_url(argv[argv.index("--backend-store-uri") + 1])
    for service in ("worker", "scheduler"):
        storage = make_url(resolved["services"][service]["environment"]["BPEXP_STORAGE"])
        assert (storage.host, storage.database) != (backend.host, backend.database), service
