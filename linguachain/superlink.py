"""A local simulation SuperLink that never installs dependencies at run time.

`flwr run .` with Flower's default `local` connection starts a SuperLink that
installs the app's dependencies into a fresh environment for every run (torch
alone is gigabytes). This module starts the same local SuperLink, at the same
address, with `--disable-runtime-dependency-installation`, so `flwr run .`
finds it running, reuses it and runs the app in the already installed
environment. The SuperLink keeps running in the background until `stop`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
from flwr.cli.constant import LOCAL_CONTROL_API_ADDRESS, LOCAL_SUPERLINK_HTTP_API_PORT
from flwr.cli.flower_config import init_flwr_config
from flwr.supercore.utils import get_flwr_home

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_SECONDS = 60.0


def superlink_folder() -> Path:
    """Return the folder of Flower's local SuperLink under FLWR_HOME."""
    folder = get_flwr_home() / "local-superlink"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pid_file() -> Path:
    """Return the file that stores the PID of the SuperLink this module started."""
    return superlink_folder() / "linguachain-superlink.pid"


def is_running() -> bool:
    """Return True if a local SuperLink passes its health check."""
    try:
        url = f"http://127.0.0.1:{LOCAL_SUPERLINK_HTTP_API_PORT}/health"
        return httpx.get(url, timeout=1.0).is_success
    except httpx.HTTPError:
        return False


def read_pid() -> int | None:
    """Return the recorded SuperLink PID if that process still exists."""
    try:
        pid = int(pid_file().read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def start(num_supernodes: int, cpus_per_clientapp: int) -> str:
    """Start (or reuse) the local SuperLink and set its simulation resources."""
    init_flwr_config()
    if is_running():
        if read_pid() is None:
            raise RuntimeError(
                f"A SuperLink that linguachain did not start already listens on"
                f" 127.0.0.1:{LOCAL_SUPERLINK_HTTP_API_PORT}; it may install"
                " dependencies at run time. End that process (for example"
                " `pkill -f flower-superlink`), then run `linguachain superlink"
                " start` again."
            )
        message = f"Reusing the local SuperLink (PID {read_pid()})"
    else:
        folder = superlink_folder()
        command = [
            "flower-superlink",
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--disable-runtime-dependency-installation",
            "--control-api-address",
            LOCAL_CONTROL_API_ADDRESS,
            "--host",
            "127.0.0.1",
            "--port",
            str(LOCAL_SUPERLINK_HTTP_API_PORT),
            "--database",
            str(folder / "state.db"),
            "--log-file",
            str(folder / "superlink.log"),
        ]
        process = subprocess.Popen(  # noqa: S603 - fixed argument list
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        pid_file().write_text(str(process.pid))
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not is_running():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(
                    "The local SuperLink failed to start; see"
                    f" {folder / 'superlink.log'}."
                )
            time.sleep(0.5)
        message = f"Started the local SuperLink (PID {process.pid})"

    subprocess.run(  # noqa: S603 - fixed argument list
        [
            "flwr",
            "federation",
            "simulation-config",
            "--num-supernodes",
            str(num_supernodes),
            "--client-resources-num-cpus",
            str(cpus_per_clientapp),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return (
        f"{message} on 127.0.0.1:{LOCAL_SUPERLINK_HTTP_API_PORT} without run-time"
        f" dependency installation: {num_supernodes} SuperNodes,"
        f" {cpus_per_clientapp} CPU per ClientApp. Log:"
        f" {superlink_folder() / 'superlink.log'}"
    )


def stop() -> str:
    """Stop the SuperLink this module started, by its PID."""
    pid = read_pid()
    if pid is None:
        pid_file().unlink(missing_ok=True)
        return "No local SuperLink started by linguachain is running."
    os.killpg(pid, signal.SIGTERM)
    for _ in range(40):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.25)
    else:
        os.killpg(pid, signal.SIGKILL)
    pid_file().unlink(missing_ok=True)
    return f"Stopped the local SuperLink (PID {pid})."
