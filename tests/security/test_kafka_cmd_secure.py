"""``capgroup kafka start --security sasl_ssl --env-file PATH``: the bootstrap line comes
first, and the env file alone points a client at the secured cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

from capgroup.security import check_access
from capgroup.settings import load_settings
from tests.kafka_fixtures import unavailable
from tests.processes import ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


def test_start_writes_an_env_file_a_member_can_use(tmp_path: Path) -> None:
    env_file = tmp_path / "kafka.env"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPGROUP_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "capgroup.cli.main",
            "kafka",
            "start",
            "--security",
            "sasl_ssl",
            "--env-file",
            str(env_file),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if not first.startswith("bootstrap servers: "):
            proc.wait(30)
            unavailable(f"capgroup kafka start failed (exit {proc.returncode}): {first!r}")
        bootstrap = first.removeprefix("bootstrap servers: ").strip()
        assert proc.stdout.readline().strip() == f"client settings: {env_file}"
        values = dotenv_values(env_file)
        assert values["CAPGROUP_BOOTSTRAP_SERVERS"] == bootstrap
        assert values["CAPGROUP_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert values["CAPGROUP_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert values["CAPGROUP_SASL_USERNAME"] == "alice"
        assert Path(str(values["CAPGROUP_SSL_CAFILE"])).is_file()
        assert env_file.stat().st_mode & 0o077 == 0
        for line in env_file.read_text().splitlines():
            name, sep, _ = line.partition("=")
            assert sep
            assert name.startswith("CAPGROUP_")
        settings = load_settings(
            **{k.removeprefix("CAPGROUP_").lower(): v for k, v in values.items()},
            group_id="env-file-group",
            topics=["absent-is-fine"],
        )
        assert check_access(settings) is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
