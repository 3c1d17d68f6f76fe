"""`timesheets` commands run as real child processes on loopback ports, for end-to-end tests."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

TIMESHEETS = Path(sys.executable).parent / "timesheets"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def clean_env(**settings: str) -> dict[str, str]:
    """This environment without any TIMESHEETS_*/AUTH0_* setting, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIMESHEETS_", "AUTH0_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PYTHONUNBUFFERED"] = "1"  # so that the log explains a failure
    env.update(settings)
    return env


class ServerProcess:
    """`timesheets <args> --port PORT` in `cwd`, as a child process; output goes to a log file."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], port: int) -> None:
        self.args, self.cwd, self.env, self.port = args, cwd, env, port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = cwd / f"{args[0]}-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(TIMESHEETS), *self.args, "--port", str(self.port)],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"timesheets {self.args[0]} exited with {self.process.returncode}:\n"
                    f"{self.log()}"
                )
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0, trust_env=False).is_success:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail(
            f"timesheets {self.args[0]} did not answer /healthz within {timeout}s:\n{self.log()}"
        )

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-6000:]
