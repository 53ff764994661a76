"""Child processes of the tests: members and consumers started with ``CAPGROUP_*`` settings in
their environment, stderr kept in a file, and always reaped (stopped ones included)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import anyio

ROOT = Path(__file__).resolve().parents[1]


def capgroup_env(settings: Mapping[str, Any], **extra: str) -> dict[str, str]:
    """This process's environment without its ``CAPGROUP_*`` variables, then ``settings`` as
    ``CAPGROUP_*`` variables (lists comma-separated), then ``extra``; the repository is on
    ``PYTHONPATH`` so ``tests.*`` and ``examples.*`` import."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPGROUP_")}
    for key, value in settings.items():
        env[f"CAPGROUP_{key.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT)
    return env


class ChildProcess:
    """One OS process of a test. Subclasses say what to run in :meth:`command`."""

    def __init__(self, env: dict[str, str], stderr_path: Path) -> None:
        self._env = env
        self.stderr_path = stderr_path
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line to run."""
        raise NotImplementedError

    def start(self) -> Self:
        """Start the process, its stderr appended to :attr:`stderr_path`."""
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                self.command(), env=self._env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err
            )
        return self

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stderr(self) -> str:
        """Everything the process wrote to stderr so far."""
        if not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")

    def stderr_tail(self, chars: int = 3000) -> str:
        """The end of stderr, for assertion messages."""
        return self.stderr()[-chars:]

    async def wait_exit(self, within: float) -> int:
        """The exit code, once the process has exited (fails after ``within`` seconds)."""
        assert self.proc is not None
        proc = self.proc
        deadline = anyio.current_time() + within
        while proc.poll() is None:
            if anyio.current_time() > deadline:
                raise AssertionError(f"the process did not exit within {within:.0f} s")
            await anyio.sleep(0.05)
        return proc.returncode

    def close(self) -> None:
        """Make sure the process is gone (a SIGSTOPped one is continued first)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(10)


def json_objects(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects among ``lines``; anything else (a torn last line after SIGKILL, a
    non-JSON log line) is skipped."""
    for line in lines:
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            yield value


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The objects of a JSON-lines file a child wrote (nothing if it does not exist yet)."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as stream:
        yield from json_objects(stream)
