"""A throwaway PostgreSQL server on 127.0.0.1 for tests, stopped by its PID."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from linguachain.deploy.local_cluster import free_port

POSTGRES_USER = "postgres"


def postgres_binaries() -> tuple[Path, Path] | None:
    """Return the initdb and postgres executables, or None if not installed."""
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb is None or postgres is None:
        return None
    return Path(initdb), Path(postgres)


def postgres_unavailable_reason() -> str | None:
    """Return why a test PostgreSQL server cannot start here, or None."""
    if postgres_binaries() is None:
        return "PostgreSQL (initdb, postgres) is not installed"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(POSTGRES_USER)
        except KeyError:
            return "running as root without a 'postgres' user to run the server as"
    return None


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start PostgreSQL on a free 127.0.0.1 port and yield a SQLAlchemy URL."""
    binaries = postgres_binaries()
    if binaries is None:
        raise RuntimeError("PostgreSQL (initdb, postgres) is not installed")
    initdb, postgres = binaries

    # PostgreSQL refuses to run as root, so root runs it as the postgres user.
    user = POSTGRES_USER if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="lc-postgres-"))
    if user is not None:
        account = pwd.getpwnam(user)
        os.chown(folder, account.pw_uid, account.pw_gid)

    data = folder / "data"
    subprocess.run(
        [str(initdb), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        user=user,
        cwd=folder,
        timeout=120,
    )

    port = free_port()
    log = open(folder / "postgres.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            str(postgres), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
            "-k", str(folder), "-c", "fsync=off",
        ],  # fmt: skip
        stdout=log,
        stderr=subprocess.STDOUT,
        user=user,
        cwd=folder,
    )
    try:
        deadline = time.monotonic() + 60
        log_path = folder / "postgres.log"
        while b"ready to accept connections" not in log_path.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "PostgreSQL did not start: "
                    + (folder / "postgres.log").read_text(errors="replace")[-2000:]
                )
            time.sleep(0.2)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        # SIGINT is PostgreSQL's fast shutdown.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
