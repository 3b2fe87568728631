"""Private PostgreSQL (PostGIS + pg_cron) and Redis instances for the test suite and `make run`.

Why this exists: seatd needs PostgreSQL and Redis, but must never use or depend on whatever system
instances listen on the standard ports (5432/6379). This module starts its own instances from the
installed server binaries, on other ports, with the settings the service relies on (pg_cron
preloaded, Redis expiry notifications on, no Redis persistence).

Two modes:

* temporary (the test suite): a fresh cluster / redis-server in a temp dir on a free port, torn
  down and deleted by ``stop()``;
* persistent (``python -m seatd.devstack up|down|status|env|purge``, used by ``make run``): state
  under ``<checkout>/.seatd/``, data kept between runs, servers left running in the background.

Stdlib only, so it runs before (and independently of) the service's drivers.
PostgreSQL refuses to run as root, so when we are root the server binaries run as the
``postgres`` OS user and its files live outside the checkout, in folders that user owns.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

LOCALHOST = "127.0.0.1"
# The system services' ports: nothing here may ever start on or talk to them.
SYSTEM_PORTS = frozenset({5432, 6379})
PG_SUPERUSER = "postgres"
# PostgreSQL's min_wal_size is at least two 16 MB segments, and at most max_wal_size (the
# default 1 GB, which a cluster here keeps): below or above, it is refused or capped.
MIN_WAL_READY_MB = 32
MAX_WAL_READY_MB = 1024
PG_OS_USER = "postgres"
DEFAULT_EXTENSIONS = ("postgis", "pg_cron")
START_TIMEOUT_S = 60.0

# Below the ranges operating systems draw outgoing connections' local ports from (Linux:
# 32768-60999, macOS and Windows: 49152-65535): a port in them can be held by any client's
# connection, or its TIME_WAIT, for a minute, and the server then cannot listen on it.
DEV_PG_PORT = 15432
DEV_REDIS_PORT = 16379
DEV_DB = "seatd"
DEV_USER = "seatd"
DEV_PASSWORD = "seatd"  # a local dev instance, bound to 127.0.0.1 only


class DevstackError(RuntimeError):
    """A service could not be found, started, stopped or provisioned."""


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now and is not a system service port."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOCALHOST, 0))
            port = int(sock.getsockname()[1])
        if port not in SYSTEM_PORTS:
            return port


def port_in_use(port: int) -> bool:
    """True if something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((LOCALHOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _check_port(port: int) -> int:
    if port in SYSTEM_PORTS:
        raise DevstackError(f"port {port} belongs to a system service; refusing to use it")
    return port


def _is_root() -> bool:
    return os.geteuid() == 0


def _clean_env() -> dict[str, str]:
    """The current environment without libpq's PG* variables, which would redirect our tools."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _run(
    argv: Sequence[str],
    *,
    as_user: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run a command (optionally as another OS user via runuser) and capture its output."""
    full = list(argv)
    if as_user is not None:
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        full = [runuser, "-u", as_user, "--", *full]
    proc = subprocess.run(
        full,
        cwd=cwd,
        env=env if env is not None else _clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip()
        raise DevstackError(f"{shlex.join(argv)} failed (exit {proc.returncode}):\n{output}")
    return proc


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise DevstackError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _chown_to(path: Path, user: str | None) -> None:
    if user is not None:
        shutil.chown(path, user=user, group=None)


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _conf_value(value: str | int) -> str:
    return str(value) if isinstance(value, int) else _sql_literal(value)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


def _server_bindir(candidate: Path) -> bool:
    return all((candidate / name).is_file() for name in ("initdb", "pg_ctl", "postgres", "psql"))


def _major_key(path: Path) -> float:
    try:
        return float(path.parent.name)
    except ValueError:
        return 0.0


def find_pg_bindir() -> Path:
    """Locate the PostgreSQL server binaries (initdb, pg_ctl, postgres, psql).

    pg_config may come from libpq-dev alone, so its answer is only taken if the server is there.
    """
    candidates: list[Path] = []
    if override := os.environ.get("SEATD_PG_BINDIR"):
        candidates.append(Path(override))
    if pg_config := shutil.which("pg_config"):
        proc = _run([pg_config, "--bindir"], check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            candidates.append(Path(proc.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major_key, reverse=True)
    candidates += sorted(Path("/usr").glob("pgsql-*/bin"), key=_major_key, reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    for candidate in candidates:
        if _server_bindir(candidate):
            return candidate
    raise DevstackError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres, psql) not found. "
        "Run scripts/ensure-system-deps.sh (or install postgresql-15 postgresql-15-postgis-3 "
        "postgresql-15-cron), or set SEATD_PG_BINDIR."
    )


class PostgresServer:
    """A private PostgreSQL cluster with PostGIS and pg_cron, on its own port.

    Temporary by default: ``start()`` creates a fresh cluster in a temp dir, ``stop()`` deletes
    it. Given ``base_dir`` it is persistent: an existing cluster is reused (and started if it is
    not running), and ``stop()`` keeps the data.

    Layout under the base dir: ``pgdata/`` (the cluster), ``run/`` (its unix socket, so it never
    collides with the system instance's) and ``postgres.log``.

    The app role (``user``) owns the database and everything ``init_sql`` creates, and may
    schedule pg_cron jobs, so the service can re-apply the same file (``seatd init-db``) as itself.
    The extensions are created by the superuser first because they need superuser rights.

    ``wal_ready_mb``: that much WAL (min_wal_size) kept ready for reuse, written when the cluster
    is made, so commits never wait for a new WAL file (``seatd bench``; see ``_fill_wal``).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        dbname: str = DEV_DB,
        user: str = DEV_USER,
        password: str = DEV_PASSWORD,
        init_sql: Path | None = None,
        base_dir: Path | None = None,
        durable: bool = False,
        extensions: Sequence[str] = DEFAULT_EXTENSIONS,
        bindir: Path | None = None,
        wal_ready_mb: int = 0,
    ) -> None:
        self.port = _check_port(port if port is not None else free_port())
        self.dbname = dbname
        self.user = user
        self.password = password
        self.init_sql = init_sql
        self.persistent = base_dir is not None
        self.durable = durable
        self.extensions = tuple(extensions)
        self.bindir = bindir or find_pg_bindir()
        # WAL kept ready for reuse (min_wal_size), written once when the cluster is made.
        if wal_ready_mb and not MIN_WAL_READY_MB <= wal_ready_mb <= MAX_WAL_READY_MB:
            raise DevstackError(
                f"wal_ready_mb is 0 or {MIN_WAL_READY_MB} to {MAX_WAL_READY_MB}, not {wal_ready_mb}"
            )
        self.wal_ready_mb = wal_ready_mb
        self._base = base_dir
        # PostgreSQL refuses to run as root: its binaries then run as the postgres OS user.
        self._os_user = PG_OS_USER if _is_root() else None

    # -- paths -------------------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        """The folder holding the cluster, its socket dir and its log."""
        if self._base is None:
            raise DevstackError("PostgresServer has no base dir yet: call start() first")
        return self._base

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "run"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgres.log"

    # -- connection info ---------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """libpq/asyncpg URL for the app role."""
        auth = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return f"postgresql://{auth}@{LOCALHOST}:{self.port}/{quote(self.dbname, safe='')}"

    @property
    def superuser_dsn(self) -> str:
        """libpq/asyncpg URL for the superuser (only for tests that inspect or break things)."""
        return f"postgresql://{PG_SUPERUSER}@{LOCALHOST}:{self.port}/{quote(self.dbname, safe='')}"

    def env(self) -> dict[str, str]:
        """The POSTGRES_* variables the service reads."""
        return {
            "POSTGRES_HOST": LOCALHOST,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
            "POSTGRES_DB": self.dbname,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Initialise the cluster if needed, start it if not running, provision db and schema."""
        try:
            self._prepare_base()
            new = not (self.data_dir / "PG_VERSION").exists()
            if new:
                self._initdb()
            self._write_config()
            if self.is_running():
                self._check_running_port()
            else:
                self._pg_ctl_start()
            self._provision()
            if new and self.wal_ready_mb:
                self._fill_wal()
            if self.init_sql is not None:
                self.apply_sql(self.init_sql)
        except BaseException:
            if not self.persistent:
                with contextlib.suppress(Exception):
                    self.stop()
            raise

    def stop(self) -> None:
        """Shut the server down (fast mode); a temporary cluster is also deleted. Idempotent."""
        if self._base is None:
            return
        self.halt()
        if not self.persistent:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None

    def halt(self) -> None:
        """Stop the server process but keep its data and port (fault tests; see resume())."""
        if self.is_running():
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(int(START_TIMEOUT_S)))

    def resume(self) -> None:
        """Start the server process again after halt(), same data and port."""
        if not self.is_running():
            self._pg_ctl_start()

    def restart(self) -> None:
        """Stop (fast mode) and start again on the same port and data: drops every connection."""
        self.halt()
        self.resume()

    def is_running(self) -> bool:
        """True if the cluster's postmaster is up (per pg_ctl status)."""
        if self._base is None or not (self.data_dir / "PG_VERSION").exists():
            return False
        return self._pg_ctl("status", check=False).returncode == 0

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- SQL ---------------------------------------------------------------------------------

    def psql(self, sql: str, *, dbname: str | None = None, user: str = PG_SUPERUSER) -> str:
        """Run SQL through psql (as the superuser by default); return its tuples-only output."""
        return self._psql(["-c", sql], dbname=dbname, user=user)

    def apply_sql(self, path: Path, *, user: str | None = None) -> None:
        """Apply an SQL file with ON_ERROR_STOP, as the app role by default so it owns the objects.

        Always apply init.sql as the same role: pg_cron keys named jobs by (name, user), so the
        same file run as another role would schedule the job a second time.
        """
        self._psql(["-f", str(Path(path).resolve())], dbname=self.dbname, user=user or self.user)

    # -- internals ---------------------------------------------------------------------------

    def _prepare_base(self) -> None:
        if self._base is None:
            self._base = Path(tempfile.mkdtemp(prefix="seatd-pg-"))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        _chown_to(self.base_dir, self._os_user)
        _chown_to(self.socket_dir, self._os_user)

    def _initdb(self) -> None:
        argv = [str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", PG_SUPERUSER]
        argv += ["--auth=trust", "--encoding=UTF8", "--locale=C"]
        if not self.durable:
            argv.append("--no-sync")
        self._run_as_server(argv)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# seatd devstack settings (rewritten on every start)\n")
            conf.write("include_if_exists = 'seatd.conf'\n")

    def _settings(self) -> dict[str, str | int]:
        socket_path = self.socket_dir / f".s.PGSQL.{self.port}"
        # Unix socket paths are limited to ~107 bytes; fall back to TCP only for deep checkouts.
        sockets = str(self.socket_dir) if len(str(socket_path)) < 100 else ""
        return {
            "listen_addresses": LOCALHOST,
            "port": self.port,
            "unix_socket_directories": sockets,
            "max_connections": 300,
            "fsync": "on" if self.durable else "off",
            **({"min_wal_size": f"{self.wal_ready_mb}MB"} if self.wal_ready_mb else {}),
            "shared_preload_libraries": "pg_cron",
            "cron.database_name": self.dbname,
            # pg_cron runs jobs over libpq; point it at the only address we listen on.
            "cron.host": LOCALHOST,
        }

    def _write_config(self) -> None:
        conf = self.data_dir / "seatd.conf"
        lines = [f"{key} = {_conf_value(value)}" for key, value in self._settings().items()]
        conf.write_text("\n".join(lines) + "\n")
        _chown_to(conf, self._os_user)

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bindir / "pg_ctl"), *args, "-D", str(self.data_dir)]
        return self._run_as_server(argv, check=check)

    def _pg_ctl_start(self) -> None:
        if port_in_use(self.port):
            raise DevstackError(f"cannot start PostgreSQL: port {self.port} is already in use")
        timeout = str(int(START_TIMEOUT_S))
        try:
            self._pg_ctl("start", "-w", "-t", timeout, "-s", "-l", str(self.log_file))
        except DevstackError as exc:
            raise DevstackError(f"{exc}\n--- {self.log_file} ---\n{_tail(self.log_file)}") from exc

    def _check_running_port(self) -> None:
        """A reused cluster must already listen on the requested port (line 4 of postmaster.pid)."""
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        running = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else self.port
        if running != self.port:
            raise DevstackError(
                f"cluster {self.data_dir} is already running on port {running}, not {self.port}; "
                "stop it first"
            )

    def _run_as_server(
        self, argv: Sequence[str], *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        # cwd: the postgres OS user may not be allowed into the caller's working directory.
        return _run(argv, as_user=self._os_user, cwd=self.base_dir, check=check)

    def _psql(self, args: Sequence[str], *, dbname: str | None, user: str) -> str:
        argv = [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        argv += ["-h", LOCALHOST, "-p", str(self.port), "-U", user, "-d", dbname or self.dbname]
        env = _clean_env()
        env["PGCONNECT_TIMEOUT"] = "10"
        env["PGOPTIONS"] = "-c client_min_messages=warning"
        if user == self.user:
            env["PGPASSWORD"] = self.password
        return _run([*argv, *args], env=env).stdout

    def _fill_wal(self) -> None:
        """Leave ``wal_ready_mb`` of WAL segment files ready for reuse, as on a server that has
        run a while.

        A new cluster has none: each time its WAL crosses into a new segment, the commit doing
        it first creates and zero-fills a 16 MB file and waits for it to reach the disk (70 ms
        on a slow disk, against 3 for a commit into a recycled file; BENCHMARKS.md, round 13).
        A running server renames its old segments for reuse at each checkpoint, keeping
        min_wal_size of them. So the segments are written here by switching to a new one over
        and over (a row between switches: a switch with nothing written does nothing), and a
        checkpoint recycles them all. In the ``postgres`` database: the app's stays untouched.
        """
        size = int(self.psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'"))
        segments = -(-self.wal_ready_mb * 2**20 // size)
        self.psql(
            "CREATE TABLE seatd_wal_fill (i int);"
            f"DO $$BEGIN FOR i IN 1..{segments} LOOP"
            " INSERT INTO seatd_wal_fill VALUES (i); PERFORM pg_switch_wal(); END LOOP; END$$;"
            "DROP TABLE seatd_wal_fill",
            dbname="postgres",
        )
        self.psql("CHECKPOINT", dbname="postgres")

    def _provision(self) -> None:
        """Create the app role and database (if missing) and the extensions (superuser only)."""
        role, db = _sql_ident(self.user), _sql_ident(self.dbname)
        self.psql(
            "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
            f"{_sql_literal(self.user)}) THEN CREATE ROLE {role}; END IF; END$$;"
            f"ALTER ROLE {role} LOGIN NOSUPERUSER PASSWORD {_sql_literal(self.password)};",
            dbname="postgres",
        )
        exists = f"SELECT 1 FROM pg_database WHERE datname = {_sql_literal(self.dbname)}"
        if not self.psql(exists, dbname="postgres").strip():
            self.psql(f"CREATE DATABASE {db} OWNER {role}", dbname="postgres")
        statements = [f"CREATE EXTENSION IF NOT EXISTS {_sql_ident(e)}" for e in self.extensions]
        if "pg_cron" in self.extensions:
            statements.append(f"GRANT USAGE ON SCHEMA cron TO {role}")
        if statements:
            self.psql(";".join(statements), dbname=self.dbname)


# --------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------


def redis_ping(port: int, timeout: float = 0.5) -> bool:
    """True if a Redis server on 127.0.0.1:port answers PING (raw socket: no client library)."""
    try:
        with socket.create_connection((LOCALHOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A private redis-server on its own port: no persistence, key expiry notifications (Ex) on.

    Temporary by default: runs in the foreground as our child (the test suite), in a temp dir that
    ``stop()`` deletes. Given ``base_dir`` it is persistent: daemonized with a pidfile and logfile
    there, so it outlives the ``devstack up`` command (``make run``).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        base_dir: Path | None = None,
        executable: str | None = None,
    ) -> None:
        self.port = _check_port(port if port is not None else free_port())
        self.persistent = base_dir is not None
        self.executable = executable or shutil.which("redis-server") or ""
        if not self.executable:
            raise DevstackError("redis-server not found; run scripts/ensure-system-deps.sh")
        self._base = base_dir
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_dir(self) -> Path:
        """The folder holding the server's working dir, pidfile and log."""
        if self._base is None:
            raise DevstackError("RedisServer has no base dir yet: call start() first")
        return self._base

    @property
    def pidfile(self) -> Path:
        return self.base_dir / "redis.pid"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://{LOCALHOST}:{self.port}/0"

    def env(self) -> dict[str, str]:
        """The REDIS_* variables the service reads."""
        return {"REDIS_HOST": LOCALHOST, "REDIS_PORT": str(self.port)}

    def ping(self) -> bool:
        return redis_ping(self.port)

    def is_running(self) -> bool:
        """True if our server process is alive and answers PING."""
        if self._proc is not None:
            return self._proc.poll() is None and self.ping()
        return self._daemon_pid() is not None and self.ping()

    def start(self) -> None:
        """Start the server (unless our persistent one already runs) and wait for PING."""
        if self.persistent and self.is_running():
            return
        if port_in_use(self.port):
            raise DevstackError(f"cannot start Redis: port {self.port} is already in use")
        if self._base is None:
            self._base = Path(tempfile.mkdtemp(prefix="seatd-redis-"))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.persistent:
            _run([*self._argv(), "--daemonize", "yes", "--pidfile", str(self.pidfile)])
        else:
            self._proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        self._wait_ready()

    def stop(self) -> None:
        """Stop the server; a temporary one's dir is also deleted. Idempotent."""
        self.halt()
        if not self.persistent and self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None

    def halt(self) -> None:
        """Stop the server process but keep its port and dir (fault tests; see resume())."""
        if self._proc is not None:
            self._terminate_child(self._proc)
            self._proc = None
        elif self.persistent and (pid := self._daemon_pid()) is not None:
            os.kill(pid, signal.SIGTERM)
            _wait_until(lambda: not _pid_alive(pid), 15.0, f"redis-server (pid {pid}) to exit")

    def resume(self) -> None:
        """Start the server again on the same port after halt(); it comes back empty."""
        self.start()

    def restart(self) -> None:
        """Stop and start again on the same port (all data is lost: no persistence)."""
        self.halt()
        self.resume()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _argv(self) -> list[str]:
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", LOCALHOST,
            "--save", "",
            "--appendonly", "no",
            "--notify-keyspace-events", "Ex",
            "--dir", str(self.base_dir),
            "--logfile", str(self.log_file),
        ]  # fmt: skip

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ping():
            exited = self._proc is not None and self._proc.poll() is not None
            if exited or time.monotonic() > deadline:
                self.halt()
                raise DevstackError(
                    f"redis-server did not come up on port {self.port}\n"
                    f"--- {self.log_file} ---\n{_tail(self.log_file)}"
                )
            time.sleep(0.05)

    @staticmethod
    def _terminate_child(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _daemon_pid(self) -> int | None:
        """The pid from our pidfile, if that process is alive and is a redis-server."""
        if self._base is None:
            return None
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and b"redis-server" not in cmdline.read_bytes():
            return None  # stale pidfile, pid reused by something else
        return pid


# --------------------------------------------------------------------------------------------
# `python -m seatd.devstack`: the persistent stack behind `make run`
# --------------------------------------------------------------------------------------------


def checkout_dir() -> Path:
    """The repository this module lives in (the CLI is for development checkouts only)."""
    return Path(__file__).resolve().parent.parent


class DevStack:
    """The persistent dev services of one checkout, with their state under ``<checkout>/.seatd``."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or checkout_dir()).resolve()
        self.state_dir = self.root / ".seatd"
        self.state_file = self.state_dir / "state.json"

    @property
    def pg_base(self) -> Path:
        """Where the cluster lives: inside .seatd, or (as root) in a postgres-owned folder.

        The postgres OS user may not be able to enter the checkout, hence the folder outside it.
        """
        if not _is_root():
            return self.state_dir
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:10]
        return Path("/var/tmp") / f"seatd-{digest}"

    def ports(self, *, for_up: bool = False) -> tuple[int, int]:
        """(postgres, redis) ports: what `up` recorded, else the env overrides, else defaults."""
        state = {} if for_up else self._read_state()

        def pick(key: str, env_name: str, default: int) -> int:
            return int(str(state.get(key) or os.environ.get(env_name) or default))

        return (
            pick("postgres_port", "SEATD_DEV_PG_PORT", DEV_PG_PORT),
            pick("redis_port", "SEATD_DEV_REDIS_PORT", DEV_REDIS_PORT),
        )

    def postgres(self, port: int) -> PostgresServer:
        init_sql = self.root / "init.sql"
        return PostgresServer(
            port,
            init_sql=init_sql if init_sql.exists() else None,
            base_dir=self.pg_base,
            durable=True,
        )

    def redis(self, port: int) -> RedisServer:
        return RedisServer(port, base_dir=self.state_dir / "redis")

    def up(self) -> None:
        """Start whatever is not running and (re)apply init.sql; safe to repeat."""
        pg_port, redis_port = self.ports(for_up=True)
        self.state_dir.mkdir(exist_ok=True)
        self.postgres(pg_port).start()
        self._link_pg_files()
        self.redis(redis_port).start()
        self._write_state(pg_port, redis_port)
        self.jwt_secret()

    def down(self) -> None:
        """Stop both services, keeping their data."""
        pg_port, redis_port = self.ports()
        self.redis(redis_port).stop()
        self.postgres(pg_port).stop()

    def purge(self) -> None:
        """Stop both services and delete all their data and state."""
        self.down()
        shutil.rmtree(self.pg_base, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def status(self) -> dict[str, bool]:
        """Which services are running, keyed by name."""
        pg_port, redis_port = self.ports()
        return {
            "postgres": self.postgres(pg_port).is_running(),
            "redis": self.redis(redis_port).is_running(),
        }

    def env(self) -> dict[str, str]:
        """Everything `seatd` needs to talk to this stack, plus a per-checkout JWT secret."""
        pg_port, redis_port = self.ports()
        env = {
            "POSTGRES_HOST": LOCALHOST,
            "POSTGRES_PORT": str(pg_port),
            "POSTGRES_USER": DEV_USER,
            "POSTGRES_PASSWORD": DEV_PASSWORD,
            "POSTGRES_DB": DEV_DB,
            "REDIS_HOST": LOCALHOST,
            "REDIS_PORT": str(redis_port),
        }
        env["SEATD_JWT_SECRET"] = self.jwt_secret()
        return env

    def jwt_secret(self) -> str:
        """A random secret generated once per checkout and kept in .seatd/jwt_secret (0600)."""
        path = self.state_dir / "jwt_secret"
        if not path.exists():
            self.state_dir.mkdir(exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32) + "\n")
        return path.read_text().strip()

    def _read_state(self) -> dict[str, object]:
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_state(self, pg_port: int, redis_port: int) -> None:
        state = {
            "postgres_port": pg_port,
            "redis_port": redis_port,
            "postgres_dir": str(self.pg_base),
            "redis_dir": str(self.state_dir / "redis"),
        }
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")

    def _link_pg_files(self) -> None:
        """As root the cluster lives outside the checkout: link it into .seatd to find it."""
        if self.pg_base == self.state_dir:
            return
        for name in ("pgdata", "postgres.log"):
            link, target = self.state_dir / name, self.pg_base / name
            if link.is_symlink() and link.readlink() == target:
                continue
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)


def _print_status(stack: DevStack) -> bool:
    pg_port, redis_port = stack.ports()
    running = stack.status()
    for name, port in (("postgres", pg_port), ("redis", redis_port)):
        state = "running" if running[name] else "stopped"
        print(f"{name:9} {state:8} {LOCALHOST}:{port}")
    print(f"postgres data: {stack.pg_base / 'pgdata'}")
    return all(running.values())


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: up | down | status | env | purge."""
    parser = argparse.ArgumentParser(
        prog="python -m seatd.devstack",
        description="Private PostgreSQL + Redis for local development (make run).",
    )
    parser.add_argument("command", choices=["up", "down", "status", "env", "purge"])
    args = parser.parse_args(argv)
    stack = DevStack()
    try:
        if args.command == "up":
            stack.up()
            _print_status(stack)
            # The interpreter that runs this one has seatd installed (the checkout's venv).
            python = os.path.relpath(sys.executable) if sys.executable else "python"
            if python.startswith(".."):
                python = sys.executable
            print(f'load the environment with: eval "$({python} -m seatd.devstack env)"')
        elif args.command == "down":
            stack.down()
            _print_status(stack)
        elif args.command == "purge":
            stack.purge()
            print("devstack stopped and its data deleted")
        elif args.command == "status":
            return 0 if _print_status(stack) else 3
        else:
            for name, value in stack.env().items():
                print(f"export {name}={shlex.quote(value)}")
    except DevstackError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
