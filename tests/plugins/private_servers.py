"""Throwaway database servers for tests that stop or restart their broker.

The shared brokers are never restarted; a test that needs an outage starts one of
these on a free port in its temp dir, and every process it starts is ended by pid.
PostgreSQL and MariaDB refuse to run as root: when the tests run as root, the
server runs as the ``postgres`` / ``mysql`` system user (``runuser``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PrivateMariaDB", "PrivatePostgres", "PrivateRedis", "free_port"]


def free_port() -> int:
    """A TCP port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _as_user(user: str) -> dict[str, Any]:
    """``Popen`` arguments running a server as ``user`` when we are root."""
    if os.geteuid() != 0 or not user:
        return {}
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        pytest.skip(f"running as root and there is no {user!r} user to run the server as")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _own(path: Path, user: str) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server not listening within {timeout}s: {log.read_text()[-2000:]}")


class _Server:
    """A server process in its own process group, stopped by pid, with its files in
    a directory of its own under the system temp dir (pytest's tmp_path is private
    to root, and the server may run as another user); :meth:`cleanup` removes it."""

    user = ""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="polyq-private-"))
        os.chmod(self.base, 0o755)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.base / "server.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> None:
        """Wait until the server answers (after the port is open)."""

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it accepts connections."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                **_as_user(self.user),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.base,
            )
        _wait_port(self.port, self.proc, timeout, self.log)
        self.ready()

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """End the server's process group (SIGKILL: a crash) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def cleanup(self) -> None:
        """Stop the server and remove its files."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


class PrivateRedis(_Server):
    """A redis-server with no persistence, optionally with ``requirepass``."""

    def __init__(self, password: str | None = None) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        super().__init__()
        self.password = password

    def command(self) -> list[str]:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "no", "--dir", str(self.base)]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd

    def url(self, password: str | None = None) -> str:
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"


class PrivatePostgres(_Server):
    """A PostgreSQL cluster made by ``initdb`` in the temp dir (trust for ``postgres``
    on the socket, password for TCP users)."""

    user = "postgres"

    def __init__(self) -> None:
        initdb = shutil.which("initdb")
        postgres = shutil.which("postgres")
        if initdb is None or postgres is None:
            pytest.skip("PostgreSQL's initdb/postgres are not installed")
        super().__init__()
        base = self.base
        self.binary = postgres
        self.data = base / "pgdata"
        self.sock = base / "sock"
        for path in (base, self.sock):
            path.mkdir(exist_ok=True)
            _own(path, self.user)
        pwfile = base / "pw"
        pwfile.write_text("secret\n")
        _own(pwfile, self.user)
        subprocess.run(
            [initdb, "-D", str(self.data), "-U", "postgres", "-A",
             "scram-sha-256", "--pwfile", str(pwfile), "--no-sync"],
            check=True, capture_output=True, **_as_user(self.user),
        )  # fmt: skip

    def command(self) -> list[str]:
        return [self.binary, "-D", str(self.data), "-p", str(self.port), "-k", str(self.sock),
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]  # fmt: skip

    def ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def url(self, database: str = "postgres", user: str = "postgres", pw: str = "secret") -> str:
        return f"postgresql://{user}:{pw}@127.0.0.1:{self.port}/{database}"


class PrivateMariaDB(_Server):
    """A MariaDB server made by ``mariadb-install-db`` in the temp dir; root has the
    password ``secret`` over TCP."""

    user = "mysql"

    def __init__(self) -> None:
        install = shutil.which("mariadb-install-db")
        server = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        if install is None or not os.path.exists(server):
            pytest.skip("mariadb-install-db/mariadbd are not installed")
        super().__init__()
        base = self.base
        self.binary = server
        self.data = base / "mydata"
        self.data.mkdir()
        _own(base, self.user)
        _own(self.data, self.user)
        subprocess.run(
            [install, f"--datadir={self.data}", f"--user={self.user}", "--skip-test-db",
             "--auth-root-authentication-method=normal", "--no-defaults"],
            check=True, capture_output=True,
        )  # fmt: skip
        self._secured = False

    def command(self) -> list[str]:
        return [self.binary, "--no-defaults", f"--datadir={self.data}", f"--port={self.port}",
                "--bind-address=127.0.0.1", f"--socket={self.base / 'my.sock'}",
                "--skip-log-bin", "--innodb-buffer-pool-size=16M", "--skip-name-resolve",
                f"--pid-file={self.base / 'my.pid'}"]  # fmt: skip

    def ready(self) -> None:
        import pymysql

        deadline = time.monotonic() + 30
        while True:
            try:
                if not self._secured:
                    conn = pymysql.connect(unix_socket=str(self.base / "my.sock"), user="root")
                    with conn.cursor() as cur:
                        cur.execute("CREATE DATABASE IF NOT EXISTS polyq")
                        for sql in (
                            "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'",
                            "ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY 'secret'",
                            "GRANT ALL ON *.* TO 'root'@'127.0.0.1'",
                        ):
                            cur.execute(sql)
                    conn.close()
                    self._secured = True
                pymysql.connect(
                    host="127.0.0.1", port=self.port, user="root", password="secret"
                ).close()
                return
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def url(self, user: str = "root", pw: str = "secret") -> str:
        return f"mysql://{user}:{pw}@127.0.0.1:{self.port}/polyq"
