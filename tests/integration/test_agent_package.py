"""The agent installs and runs on a machine without the platform's dependencies.

Builds the `atp-agent` wheel (packaging/agent: `agent` + `trading`), installs it into a
fresh virtualenv that has no Ray, SQLAlchemy, asyncpg, Redis or FastAPI, and runs
`atp-agent run --offline` and `atp-agent status` there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
name: packaged
speed: 50
bots:
  - name: sma
    strategy: sma_crossover
    symbols: [ETH-USD]
    params: {fast: 2, slow: 4, quantity: "0.1"}
    capital: 100000
"""


@pytest.mark.timeout(900)
def test_the_agent_wheel_runs_without_ray_or_postgres(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT / "packaging" / "agent"),
                    "--no-deps", "-w", str(wheels), "-q"], check=True, timeout=300)
    shutil.rmtree(ROOT / "atp_agent.egg-info", ignore_errors=True)  # setuptools' leftovers
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    [wheel] = wheels.glob("atp_agent-*.whl")
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True,
                   timeout=600)
    for module in ("ray", "sqlalchemy", "asyncpg", "redis", "fastapi"):
        probe = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True)
        assert probe.returncode != 0, f"{module} is installed in the agent's environment"
    (tmp_path / "agent.yaml").write_text(CONFIG)
    db = tmp_path / "agent.db"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = subprocess.Popen([str(env_dir / "bin" / "atp-agent"), "run", "--offline", "--config",
                            str(tmp_path / "agent.yaml"), "--db", str(db)], env=env,
                           cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        made = 0
        while time.monotonic() < deadline and made < 20:
            time.sleep(1)
            status = subprocess.run([str(env_dir / "bin" / "atp-agent"), "status", "--db",
                                     str(db), "--json"], env=env, cwd=tmp_path,
                                    capture_output=True, text=True, timeout=60)
            if status.returncode == 0:
                made = json.loads(status.stdout)["next_seq"] - 1
        assert made >= 20, "the packaged agent made no events"
    finally:
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=60) == 0, run.stderr.read() if run.stderr else ""
