"""A real, throwaway PostgreSQL for tests and benchmarks: initdb + pg_ctl in a temp directory, loopback TCP on a free
port, fsync and synchronous_commit on (the defaults the PostgreSQL metadata store relies on).

The binaries come from Debian through scripts/install_postgres.sh (which scripts/test.sh runs). As root
(CI), initdb and the server run as the `postgres` user (Debian's initdb refuses root), in a directory
handed to that user. If PostgreSQL cannot be found or started, tests fail: never skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from ledger_testkit.ports import free_port

REPOSITORY = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 60
SERVER_USER = "postgres"
"""The OS user the server runs as when the tests run as root (Debian's package creates it)."""


def postgres_bindir() -> Path:
    """Installs PostgreSQL if missing (idempotent) and returns the directory of initdb and pg_ctl."""
    completed = subprocess.run(
        ["bash", str(REPOSITORY / "scripts" / "install_postgres.sh")], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"scripts/install_postgres.sh failed: {completed.stderr.strip()}")
    return Path(completed.stdout.strip().splitlines()[-1])


@dataclass
class PostgresServer:
    bindir: Path
    directory: Path
    port: int
    _databases: itertools.count[int]

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database} connect_timeout=10"

    def create_database(self) -> str:
        """A new, empty database; returns its DSN."""
        name = f"metadata_{next(self._databases)}"
        with psycopg.connect(self.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def _as_server_user(self, command: list[str]) -> list[str]:
        return ["runuser", "-u", SERVER_USER, "--", *command] if os.geteuid() == 0 else command

    def run(self, *command: str) -> None:
        completed = subprocess.run(
            self._as_server_user(list(command)),
            capture_output=True,
            text=True,
            check=False,
            timeout=START_TIMEOUT_SECONDS,
        )
        if completed.returncode != 0:
            log = self.directory / "server.log"
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise RuntimeError(f"{command[0]} failed: {completed.stdout}{completed.stderr}\n{tail}")

    def start(self) -> None:
        data = self.directory / "data"
        self.run(
            str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"
        )
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.directory} "
            "-c fsync=on -c synchronous_commit=on -c max_connections=200"
        )
        self.run(
            str(self.bindir / "pg_ctl"), "-D", str(data), "-l", str(self.directory / "server.log"),
            "-o", options, "-w", "-t", str(START_TIMEOUT_SECONDS), "start",
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.run(str(self.bindir / "pg_ctl"), "-D", str(self.directory / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


def start_postgres() -> PostgresServer:
    # Not under pytest's tmp_path: its parents are private to the test user, the server user must enter.
    directory = Path(tempfile.mkdtemp(prefix="ledger-pg-"))
    if os.geteuid() == 0:
        account = pwd.getpwnam(SERVER_USER)
        os.chown(directory, account.pw_uid, account.pw_gid)
    server = PostgresServer(postgres_bindir(), directory, free_port(), itertools.count(1))
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server
