"""Private PostgreSQL and RabbitMQ instances for fault-injection tests.

The machine's shared PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) must never be
stopped or reconfigured, so fault tests run against instances of their own, which they may
stop, kill and restart at will:

* :class:`PrivatePostgres` - a PostgreSQL 15 cluster in ``base_dir/data``;
* :class:`PrivateRabbit` - a RabbitMQ 3.10 node with its own node name, data, config, Erlang
  cookie and ``epmd``;
* :class:`PrivateRabbitCluster` - three such nodes (by default) joined in one cluster, sharing
  a cookie and an ``epmd``.

Both listen on 127.0.0.1 only, on ports chosen at construction below the kernel's ephemeral
range, so that no outgoing connection can take a port while its service is down between a
stop and a start. Every method blocks; from an async test whose event loop must keep running
meanwhile (in-process workers, say), call them through ``asyncio.to_thread``.

Users and permissions. Tests run as root, but ``initdb`` refuses to run as root, and the
Debian ``rabbitmq-server``/``rabbitmqctl`` wrappers in ``/usr/sbin`` ``su`` to ``rabbitmq``,
``cd /var/lib/rabbitmq`` and so pick up the *shared* node's Erlang cookie. So every service
process runs as ``postgres`` / ``rabbitmq`` through ``setpriv`` (which execs: the pid we hold
is the server's own, where ``runuser``/``su`` would fork and wait), with a clean environment
(nothing like ``PGPORT``, ``ERL_FLAGS`` or ``RABBITMQ_*`` leaks in), and the RabbitMQ scripts
are run from the installation directory, not through the wrappers. ``base_dir`` is handed to
that user, so every directory above it must be searchable by the user: pytest's ``tmp_path``
is not (``/tmp/pytest-of-root`` is mode 0700). Use :func:`new_base_dir`.

Nothing is left running:

* :meth:`cleanup` kills every process an instance started and removes ``base_dir``. It is
  idempotent and registered with :mod:`atexit`.
* If the test process dies without running atexit handlers (SIGKILL, SIGTERM, ``os._exit``,
  pytest-timeout's thread method), a watchdog process does the same. It is started by the
  first :meth:`start`, in a session of its own, and blocks reading a pipe whose only writer is
  the test process: the kernel closes that pipe when the test process dies, however it dies.
  :meth:`cleanup` disarms it. (A child forked without exec would hold the pipe open too.)
* The pid and start time of every process started are recorded in ``base_dir/pids``, and
  processes are killed as whole trees, stopped first so that nothing forks in between.
* Orphans (the backends of a killed postmaster, Erlang port programs) are reaped by init. On
  this machine PID 1 does that lazily: ``ps`` may show them ``<defunct>`` for a few seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Literal

PG_BIN = Path("/usr/lib/postgresql/15/bin")
# The installation the /usr/lib/rabbitmq/bin symlinks point to (not the /usr/sbin wrappers).
RABBITMQ_HOME = Path(os.path.realpath("/usr/lib/rabbitmq/bin/rabbitmq-server")).parent.parent
EPMD = "/usr/bin/epmd"

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_OWNER_ENV = "FAULTS_OWNER"  # base_dir, in the environment of every process we start
_DISARM = b"disarm"

StopMode = Literal["smart", "fast", "immediate"]
_PG_STOP_SIGNALS: dict[str, signal.Signals] = {
    # What ``pg_ctl stop -m MODE`` sends to the postmaster.
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}


def new_base_dir(prefix: str = "faults-") -> Path:
    """A fresh directory for one instance, in a place the service users can reach."""
    return Path(tempfile.mkdtemp(prefix=prefix))


# --- ports ---------------------------------------------------------------------------------

_ports_handed_out: set[int] = set()
_PORTS_TO_AVOID = {4369, 5432, 5672, 15672, 25672}


def _ephemeral_port_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_is_free(port: int) -> bool:
    # No SO_REUSEADDR, so a port in TIME_WAIT counts as taken; and binding the wildcard
    # address fails if anything is bound to the port on any address.
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 here
            continue
        with sock:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def _port_range(low: int, high: int) -> tuple[int, int]:
    """This process's share of [low, high): each xdist worker of a run draws from a slice of its
    own, so two workers never pick the same port between its check and its bind."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2:
        return low, high
    size = (high - low) // count
    start = low + int(worker[2:]) % count * size
    return start, start + size


def free_port() -> int:
    """A currently free TCP port below the ephemeral range, not handed out before."""
    floor = _ephemeral_port_floor()
    rng = random.SystemRandom()
    if floor > 20000:
        low, high = _port_range(20000, floor)
        for _ in range(500):
            port = rng.randrange(low, high)
            if port in _ports_handed_out or port in _PORTS_TO_AVOID:
                continue
            if _port_is_free(port):
                _ports_handed_out.add(port)
                return port
    # An unusual ip_local_port_range: let the kernel choose.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    _ports_handed_out.add(port)
    return port


# --- processes -----------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time in clock ticks) of a process, or None if there is none."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2, the command name, is in parentheses and may contain anything.
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def _alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))) is not None:
            children.setdefault(stat[1], []).append(int(entry))
    return children


def _descendants(pid: int) -> list[int]:
    children = _children_map()
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _kill_tree(root: int) -> list[int]:
    """SIGKILL a process and all its descendants; returns their pids, root first.

    Everything is SIGSTOPped first, so that nothing can fork, or notice its parent's death and
    start an orderly shutdown, before it is killed.
    """
    if not _alive(root):
        return []
    _signal(root, signal.SIGSTOP)
    tree = [root]
    while new := [pid for pid in _descendants(root) if pid not in tree]:
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        tree.extend(new)
    for pid in tree:
        _signal(pid, signal.SIGKILL)
    return tree


def _await_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until the processes have exited; returns those still alive at the deadline.

    A zombie counts as gone: our own children are reaped by Popen.wait(), orphans by init.
    """
    pending = set(pids)
    deadline = time.monotonic() + timeout
    while True:
        pending = {pid for pid in pending if _alive(pid)}
        if not pending or time.monotonic() > deadline:
            return sorted(pending)
        time.sleep(0.02)


# --- pid records and the watchdog ----------------------------------------------------------


def _pid_dir(base_dir: Path) -> Path:
    return base_dir / "pids"


def _record_pid(base_dir: Path, name: str, pid: int) -> None:
    stat = _proc_stat(pid)
    if stat is not None:
        (_pid_dir(base_dir) / name).write_text(f"{pid} {stat[2]}\n")


def _recorded_pids(base_dir: Path) -> list[int]:
    """Recorded pids still held by the process recorded (checked by start time)."""
    pids = []
    with contextlib.suppress(FileNotFoundError):
        for record in sorted(_pid_dir(base_dir).iterdir()):
            try:
                pid, started = (int(x) for x in record.read_text().split())
            except (OSError, ValueError):
                continue
            stat = _proc_stat(pid)
            if stat is not None and stat[2] == started:
                pids.append(pid)
    return pids


def _destroy(base_dir: Path) -> list[int]:
    """Kill every process tree recorded in base_dir, then remove it. Returns the pids killed."""
    killed: list[int] = []
    for pid in _recorded_pids(base_dir):
        killed.extend(_kill_tree(pid))
    _await_gone(killed, timeout=10)
    shutil.rmtree(base_dir, ignore_errors=True)
    return killed


class _Watchdog:
    """A process that runs :func:`_destroy` if the test process dies without disarming it."""

    def __init__(self, base_dir: Path) -> None:
        with open(base_dir / "watchdog.log", "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", str(Path(__file__).resolve()), "--watchdog", str(base_dir)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Not in our process group: a Ctrl-C aimed at pytest must not kill it first.
                start_new_session=True,
            )

    def disarm(self) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        with contextlib.suppress(BrokenPipeError):
            stdin.write(_DISARM)
            stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _watchdog_main(base_dir: Path) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    message = sys.stdin.buffer.read()  # returns at EOF: disarmed, or the test process died
    if message != _DISARM:
        print(f"test process gone, destroying {base_dir}", flush=True)
        _destroy(base_dir)


# --- common machinery ----------------------------------------------------------------------


def _tails(paths: Sequence[Path], lines: int = 40) -> str:
    text = ""
    for path in paths:
        with contextlib.suppress(OSError):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            text += f"\n--- {path}:\n" + "\n".join(tail)
    return text


class _PrivateService:
    """What PrivatePostgres and PrivateRabbit share: user, processes, waiting, cleanup."""

    user: ClassVar[str]
    name: ClassVar[str]

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = Path(base_dir).absolute()
        # Seconds taken by each start, stop, kill, restart (a restart also adds a stop and a
        # start), in order.
        self.timings: dict[str, list[float]] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: _Watchdog | None = None
        self._prepared = False
        atexit.register(self.cleanup)

    def __repr__(self) -> str:
        state = "running" if self.running else "not running"
        return f"<{type(self).__name__} {self.base_dir} {state}>"

    @property
    def running(self) -> bool:
        """Whether the server process is alive (not whether it accepts connections yet)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        """Pid of the process started: the postmaster, or RabbitMQ's start script."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._proc.pid

    # -- for subclasses

    def _env(self) -> dict[str, str]:
        return {
            "PATH": _PATH,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(self.base_dir),
            _OWNER_ENV: str(self.base_dir),
        }

    def _as_user(self, argv: list[str]) -> list[str]:
        return ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups", *argv]

    def _chown(self, *paths: Path) -> None:
        entry = pwd.getpwnam(self.user)
        for path in paths:
            os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)

    def _prepare_base_dir(self) -> None:
        """Create base_dir and its pid records directory, and arm the watchdog."""
        if self._prepared:
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)  # mkdtemp makes it 0700
        _pid_dir(self.base_dir).mkdir(mode=0o700, exist_ok=True)
        self._watchdog = _Watchdog(self.base_dir)
        self._prepared = True

    def _check_writable(self, path: Path) -> None:
        """Fail clearly if the service user cannot write to path (e.g. a 0700 ancestor)."""
        if subprocess.run(self._as_user(["test", "-w", str(path)]), env=self._env()).returncode:
            raise PermissionError(
                f"user {self.user!r} cannot write to {path}: every directory above it must be "
                "searchable by that user (pytest's tmp_path is not; use new_base_dir())"
            )

    def _run(self, argv: list[str], *, timeout: float) -> str:
        """Run a command as the service user; return its stdout, raise with its output."""
        result = subprocess.run(
            self._as_user(argv),
            env=self._env(),
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result.stdout

    def _spawn(self, argv: list[str], *, log: Path) -> None:
        with open(log, "ab") as log_file:
            self._proc = subprocess.Popen(
                self._as_user(argv),
                env=self._env(),
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C (SIGINT) aimed at pytest would otherwise reach the
                # server too (for PostgreSQL, SIGINT means "fast shutdown").
                start_new_session=True,
            )
        _record_pid(self.base_dir, self.name, self._proc.pid)

    def _wait_ready(
        self, probe: Callable[[], bool], *, timeout: float, logs: Sequence[Path]
    ) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while not probe():
            if (code := self._proc.poll()) is not None:
                raise RuntimeError(f"{self.name} exited with {code} while starting{_tails(logs)}")
            if time.monotonic() > deadline:
                # Not left half-started: the instance is simply not running.
                _await_gone(_kill_tree(self._proc.pid), timeout=10)
                self._proc.wait()
                raise TimeoutError(f"{self.name} not ready after {timeout}s{_tails(logs)}")
            time.sleep(0.05)

    def _wait_exit(self, timeout: float) -> None:
        assert self._proc is not None
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.name} (pid {self._proc.pid}) still running") from None

    def _require_running(self) -> None:
        if not self.running:
            raise RuntimeError(f"{self.name} is not running")

    @contextlib.contextmanager
    def _timed(self, what: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.timings.setdefault(what, []).append(time.monotonic() - started)

    # -- cleanup

    def cleanup(self) -> None:
        """Kill everything this instance started and remove base_dir. Idempotent.

        Processes are SIGKILLed, not shut down: their data is about to be deleted anyway.
        """
        if self._prepared or self._proc is not None:
            _destroy(self.base_dir)
        if self._proc is not None:
            self._proc.wait()
        if self._watchdog is not None:
            self._watchdog.disarm()
            self._watchdog = None
        self._prepared = False
        atexit.unregister(self.cleanup)


# --- PostgreSQL ----------------------------------------------------------------------------


class PrivatePostgres(_PrivateService):
    """A private PostgreSQL 15 cluster: ``base_dir/data``, 127.0.0.1:``port``, trust auth.

    The first :meth:`start` runs ``initdb``; later ones reuse the data (after :meth:`kill`,
    through crash recovery). ``fsync``, ``synchronous_commit`` and ``full_page_writes`` are on.
    ``settings`` are more server parameters, passed as ``-c`` options. With ``standby_of``, the
    first start takes a base backup of that (running) server instead, and the server starts as
    its streaming standby (:meth:`promote` makes it a primary).
    """

    user = "postgres"
    name = "postgres"

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        standby_of: PrivatePostgres | None = None,
    ) -> None:
        super().__init__(base_dir)
        self.standby_of = standby_of
        self.port = port if port is not None else free_port()
        self.settings = dict(settings or {})
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "run"
        self.log_file = self.base_dir / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self, timeout: float = 60) -> None:
        """Start the server (initdb first if needed); return once it accepts connections."""
        if self.running:
            raise RuntimeError("postgres is already running")
        with self._timed("start"):
            self._prepare_base_dir()
            if not (self.data_dir / "PG_VERSION").exists():
                if self.standby_of is None:
                    self._initdb()
                else:
                    self._base_backup(self.standby_of)
            settings = {
                "listen_addresses": "127.0.0.1",
                "port": str(self.port),
                "unix_socket_directories": str(self.socket_dir),
                "fsync": "on",
                "synchronous_commit": "on",
                "full_page_writes": "on",
                "logging_collector": "off",  # the log is the server's stderr, self.log_file
                "log_line_prefix": "%m [%p] %q%u@%d ",
                **self.settings,
            }
            options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
            self._spawn(
                [str(PG_BIN / "postgres"), "-D", str(self.data_dir), *options], log=self.log_file
            )
            self._wait_ready(self._accepts_connections, timeout=timeout, logs=[self.log_file])

    def _initdb(self) -> None:
        for path in (self.data_dir, self.socket_dir):
            path.mkdir(mode=0o700, exist_ok=True)
            self._chown(path)
        self._check_writable(self.data_dir)
        with self._timed("initdb"):
            self._run(
                [
                    str(PG_BIN / "initdb"),
                    f"--pgdata={self.data_dir}",
                    "--username=postgres",
                    "--auth=trust",  # local and host (127.0.0.1/32, ::1/128) connections
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",  # as the shared cluster's databases
                    "--no-instructions",
                ],
                timeout=120,
            )

    def _base_backup(self, primary: PrivatePostgres) -> None:
        """The primary's data, streamed, with ``standby.signal`` and ``primary_conninfo``
        written (``-R``): started, this server follows the primary."""
        for path in (self.data_dir, self.socket_dir):
            path.mkdir(mode=0o700, exist_ok=True)
            self._chown(path)
        with self._timed("base_backup"):
            self._run(
                [
                    str(PG_BIN / "pg_basebackup"),
                    f"--pgdata={self.data_dir}",
                    "--host=127.0.0.1",
                    f"--port={primary.port}",
                    "--username=postgres",
                    "--wal-method=stream",
                    "--write-recovery-conf",
                    "--checkpoint=fast",
                ],
                timeout=120,
            )

    def promote(self, timeout: float = 60) -> None:
        """End recovery: this standby becomes a primary; returns once it takes writes."""
        self._require_running()
        with self._timed("promote"):
            self._run(
                [
                    str(PG_BIN / "pg_ctl"),
                    "promote",
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "-D",
                    str(self.data_dir),
                ],
                timeout=timeout + 10,
            )

    def freeze(self) -> None:
        """Hang, as a host that stops answering does: SIGSTOP the postmaster and every backend.
        Their sockets stay open, so clients see no error, only silence."""
        self._require_running()
        for pid in [self.pid, *_descendants(self.pid)]:
            _signal(pid, signal.SIGSTOP)

    def _accepts_connections(self) -> bool:
        # pg_isready exits 0 when accepting, 1 when rejecting (starting, recovering), 2 when
        # there is no answer.
        argv = [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run([*argv, "-t", "2"], env=self._env()).returncode == 0

    def stop(self, mode: StopMode = "fast", timeout: float = 60) -> None:
        """Shut down as ``pg_ctl stop -m MODE`` would; wait for the postmaster to exit.

        ``immediate`` skips the shutdown checkpoint: the next start does crash recovery.
        """
        self._require_running()
        with self._timed(f"stop_{mode}"):
            _signal(self.pid, _PG_STOP_SIGNALS[mode])
            self._wait_exit(timeout)

    def kill(self) -> None:
        """Crash: SIGKILL the postmaster and all its backends at once.

        Killing the postmaster alone would leave its backends running until they notice (a
        busy one when its query ends), and the next start would refuse to run while they still
        hold the old shared memory. The next :meth:`start` does crash recovery. A process kill
        loses nothing the kernel has accepted: this is not a power loss.
        """
        self._require_running()
        with self._timed("kill"):
            pids = _kill_tree(self.pid)
            self._wait_exit(10)
            _await_gone(pids, timeout=10)

    def restart(self, mode: StopMode = "fast", timeout: float = 60) -> None:
        with self._timed("restart"):
            self.stop(mode, timeout)
            self.start(timeout)

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL as superuser ``postgres``; returns psql's unaligned, tuples-only output."""
        argv = [str(PG_BIN / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1"]
        argv += ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", dbname]
        result = subprocess.run(
            argv, input=sql, env=self._env(), capture_output=True, text=True, timeout=60
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql exited with {result.returncode}: {result.stderr}")
        return result.stdout

    def terminate_connections(self, dbname: str, wait_ms: int = 5000) -> int:
        """``pg_terminate_backend`` every backend connected to dbname but our own.

        Waits up to wait_ms for each to be gone. Returns how many were terminated.
        """
        literal = "'" + dbname.replace("'", "''") + "'"
        output = self.psql(
            f"SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, {int(wait_ms)})) "
            f"FROM pg_stat_activity WHERE datname = {literal} AND pid <> pg_backend_pid()"
        )
        return int(output)


# --- RabbitMQ ------------------------------------------------------------------------------


def _amqp_ready(port: int) -> bool:
    """Whether a broker answers the AMQP 0-9-1 protocol header with a frame on channel 0."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            header = sock.recv(7)
    except OSError:
        return False
    # A method frame (type 1) on channel 0: connection.start.
    return len(header) == 7 and header[0] == 1 and header[1:3] == b"\x00\x00"


def _tcp_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _app_closure(plugins_dir: Path, roots: Iterable[str]) -> list[Path]:
    """The application directories in plugins_dir that the root applications need.

    Follows ``applications`` and ``included_applications`` in the ``.app`` files; the OTP
    applications (kernel, ssl...) are not in plugins_dir and come from the Erlang root.
    """
    apps = {}
    for path in plugins_dir.iterdir():
        name = path.name.rsplit("-", 1)[0]
        if (path / "ebin" / f"{name}.app").is_file():
            apps[name] = path
    deps = re.compile(r"\{\s*(?:included_)?applications\s*,\s*\[([^\]]*)\]")
    needed: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in needed or name not in apps:
            continue
        needed.add(name)
        spec = (apps[name] / "ebin" / f"{name}.app").read_text()
        for match in deps.finditer(spec):
            todo += [dep.strip() for dep in match.group(1).split(",") if dep.strip()]
    return sorted(apps[name] for name in needed)


# Erlang for PrivateRabbit.global_counters: [{<<"<queue type or protocol>.<name>">>, N}].
_GLOBAL_COUNTERS = (
    "[{iolist_to_binary([atom_to_list(proplists:get_value(queue_type, Labels, amqp091)),"
    ' ".", atom_to_list(Name)]), Value}'
    " || {Labels, Counters} <- maps:to_list(rabbit_global_counters:overview()),"
    " proplists:is_defined(protocol, Labels),"
    " {Name, Value} <- maps:to_list(Counters)]."
)


class PrivateRabbit(_PrivateService):
    """A private RabbitMQ 3.10 node: guest/guest on 127.0.0.1:``port``, no plugins.

    Everything lives in base_dir: its config (replacing ``/etc/rabbitmq/rabbitmq.conf``, which
    binds 5672, and ``rabbitmq-env.conf``, which sets NODENAME), mnesia, quorum queue and
    feature flag data, logs, pid file and Erlang cookie (in ``$HOME``). Its own ``epmd`` runs on
    ``epmd_port`` from the first :meth:`start` to :meth:`cleanup`, so the node registers nowhere
    shared. A fresh node enables every feature flag, ``quorum_queue`` included.

    ``slim``: run the node from a copy of the installation (symlinks) whose plugins directory
    holds only the applications the broker needs. RabbitMQ scans every application there for
    feature flags and boot steps, which with the ~70 shipped takes about half of a start
    (about 4 s become 2). Without it, the stock installation is used.

    For a node of a :class:`PrivateRabbitCluster`: ``cookie`` is the Erlang cookie the nodes
    share (random otherwise), and ``start_epmd=False`` leaves the ``epmd`` on ``epmd_port``
    to another node (the nodes of a cluster find each other through one epmd).
    """

    user = "rabbitmq"
    name = "rabbitmq"

    def __init__(
        self,
        base_dir: Path,
        *,
        node_name: str | None = None,
        port: int | None = None,
        dist_port: int | None = None,
        epmd_port: int | None = None,
        slim: bool = True,
        cookie: str | None = None,
        start_epmd: bool = True,
    ) -> None:
        super().__init__(base_dir)
        self.cookie = cookie or secrets.token_hex(20).upper()
        self.start_epmd = start_epmd
        self.node_name = node_name or f"faults-{secrets.token_hex(4)}@localhost"
        self.port = port if port is not None else free_port()
        self.dist_port = dist_port if dist_port is not None else free_port()
        self.epmd_port = epmd_port if epmd_port is not None else free_port()
        self.rabbitmq_home = self.base_dir / "rabbitmq-home" if slim else RABBITMQ_HOME
        self.user_home = self.base_dir / "home"  # $HOME: the Erlang cookie
        self.etc = self.base_dir / "etc"
        self.mnesia_base = self.base_dir / "mnesia"
        self.log_dir = self.base_dir / "log"
        self.pid_file = self.base_dir / "run" / "rabbit.pid"
        self.console_log = self.log_dir / "console.log"  # the start script's output
        self._epmd: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        """The node's own log."""
        return self.log_dir / f"{self.node_name}.log"

    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        return {
            **super()._env(),
            # For every Erlang VM started (the node, the CLI tools, and the short-lived one
            # the node runs at boot to make sure an epmd is up): distribution on loopback
            # only, and never an epmd of their own - ours is running.
            "ERL_FLAGS": "-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}",
            "HOME": str(self.user_home),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_CRASH_DUMP": str(self.log_dir / "erl_crash.dump"),
            # The scripts derive the installation directory (and ERL_LIBS) from this one.
            "RABBITMQ_SCRIPTS_DIR": str(self.rabbitmq_home / "sbin"),
            "RABBITMQ_PLUGINS_DIR": str(self.rabbitmq_home / "plugins"),
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(self.etc / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.etc / "rabbitmq.conf"),
            "RABBITMQ_CONFIG_FILES": str(self.etc / "conf.d"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.etc / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.etc / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.mnesia_base),
            "RABBITMQ_MNESIA_DIR": str(self.mnesia_base / self.node_name),
            "RABBITMQ_LOG_BASE": str(self.log_dir),
            "RABBITMQ_PID_FILE": str(self.pid_file),
        }

    def _write_files(self) -> None:
        """Directories, config and cookie, owned by rabbitmq; the slim installation."""
        dirs = [self.user_home, self.etc, self.etc / "conf.d", self.mnesia_base, self.log_dir]
        for path in [*dirs, self.pid_file.parent]:
            path.mkdir(mode=0o750, parents=True, exist_ok=True)
        files = {
            self.etc / "rabbitmq-env.conf": "# Empty: keeps /etc/rabbitmq/rabbitmq-env.conf out.\n",
            self.etc / "rabbitmq.conf": (
                "# The listener comes from RABBITMQ_NODE_IP_ADDRESS and RABBITMQ_NODE_PORT.\n"
                "loopback_users.guest = true\n"
                "log.console = false\n"
                "log.file.level = info\n"
            ),
            self.etc / "advanced.config": "[].\n",
            self.etc / "enabled_plugins": "[].\n",  # no management plugin (and its port 15672)
            self.user_home / ".erlang.cookie": self.cookie,
        }
        for path, text in files.items():
            path.write_text(text)
            self._chown(path)
        (self.user_home / ".erlang.cookie").chmod(0o400)  # Erlang refuses a readable cookie
        self._chown(*dirs, self.pid_file.parent)
        self._check_writable(self.user_home)
        if self.rabbitmq_home != RABBITMQ_HOME:
            self._make_slim_home()

    def _make_slim_home(self) -> None:
        plugins = self.rabbitmq_home / "plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        for name in ("sbin", "escript"):
            (self.rabbitmq_home / name).symlink_to(RABBITMQ_HOME / name)
        for app in _app_closure(RABBITMQ_HOME / "plugins", ["rabbit", "rabbitmq_prelaunch"]):
            (plugins / app.name).symlink_to(app)

    def _ensure_epmd(self) -> None:
        if not self.start_epmd:
            # Another node's: it must be up already.
            if not _tcp_ready(self.epmd_port):
                raise RuntimeError(f"no epmd on port {self.epmd_port}: start the first node first")
            return
        if self._epmd is not None and self._epmd.poll() is None:
            return
        log = self.log_dir / "epmd.log"
        with open(log, "ab") as log_file:
            self._epmd = subprocess.Popen(
                self._as_user([EPMD, "-port", str(self.epmd_port), "-address", "127.0.0.1"]),
                env=self._env(),
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _record_pid(self.base_dir, "epmd", self._epmd.pid)
        deadline = time.monotonic() + 10
        while not _tcp_ready(self.epmd_port):
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"epmd did not start{_tails([log])}")
            time.sleep(0.02)

    def start(self, timeout: float = 120) -> None:
        """Start the node; return once it answers AMQP on 127.0.0.1:port."""
        if self.running:
            raise RuntimeError("rabbitmq is already running")
        with self._timed("start"):
            self._prepare_base_dir()
            if not (self.user_home / ".erlang.cookie").exists():
                self._write_files()
            self._ensure_epmd()
            self._spawn(
                [str(self.rabbitmq_home / "sbin" / "rabbitmq-server")], log=self.console_log
            )
            self._wait_ready(
                lambda: _amqp_ready(self.port),
                timeout=timeout,
                logs=[self.console_log, self.log_file],
            )

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl -n NODE ARGS...`` against this node; returns its stdout."""
        rabbitmqctl = str(self.rabbitmq_home / "sbin" / "rabbitmqctl")
        return self._run([rabbitmqctl, "-n", self.node_name, *args], timeout=timeout)

    def global_counters(self) -> dict[str, int]:
        """This node's AMQP 0-9-1 message counters since it started, from
        ``rabbit_global_counters`` (what the Prometheus plugin exports; no plugin needed).

        Keys are ``amqp091.<counter>`` for connection-level counters (``messages_received_total``,
        ``messages_confirmed_total``...) and ``<queue type>.<counter>`` for queue-level ones
        (``rabbit_quorum_queue.messages_delivered_total``, ``...redelivered_total``...).
        """
        output = self.ctl("eval", _GLOBAL_COUNTERS)
        return {key: int(value) for key, value in re.findall(r'<<"([\w.]+)">>,\s*(\d+)', output)}

    def beam_pid(self) -> int | None:
        """Pid of the node's Erlang VM, from its pid file (None while it is written)."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        # After a kill the file is stale: the VM must be a child of our start script.
        stat = _proc_stat(pid)
        return pid if self.running and stat is not None and stat[1] == self.pid else None

    def stop(self, timeout: float = 60) -> None:
        """Graceful shutdown (``rabbitmqctl stop``); waits for the node's processes to exit."""
        self._require_running()
        with self._timed("stop"):
            tree = _descendants(self.pid)  # port programs may outlive the VM for a moment
            self.ctl("stop", timeout=timeout)
            self._wait_exit(timeout)
            for pid in _await_gone(tree, timeout=5):
                _await_gone(_kill_tree(pid), timeout=5)

    def kill(self) -> None:
        """Crash: SIGKILL the node's Erlang VM, and its port programs, at once.

        Its start script then exits by itself. Confirmed messages in durable quorum queues
        survive this; the next :meth:`start` recovers them.
        """
        self._require_running()
        with self._timed("kill"):
            beam = self.beam_pid()
            roots = [beam] if beam is not None else _children_map().get(self.pid, [])
            pids = [pid for root in roots for pid in _kill_tree(root)]
            self._wait_exit(10)
            _await_gone(pids, timeout=10)

    def restart(self, timeout: float = 120) -> None:
        """stop() then start(): same node name, data and ports."""
        with self._timed("restart"):
            self.stop()
            self.start(timeout)

    def cleanup(self) -> None:
        super().cleanup()  # kills the recorded process trees, epmd's included
        if self._epmd is not None:
            self._epmd.wait()
            self._epmd = None


class PrivateRabbitCluster:
    """A private RabbitMQ cluster: ``size`` :class:`PrivateRabbit` nodes (three by default).

    Each node has its own base_dir, node name (``faults-XXXXXX-<i>@localhost``), AMQP and
    distribution ports; they share an Erlang cookie and one ``epmd`` (run by node 0, on a
    private port). :meth:`start` starts node 0, then the others, and joins them to node 0
    (``rabbitmqctl stop_app``, ``join_cluster``, ``start_app``), so that a quorum queue
    declared afterwards has a member on every node. A node killed (:meth:`kill_node`) or
    stopped comes back with :meth:`start_node` and rejoins by itself: its membership is in its
    data. Nothing here stops a test from taking down a majority; the chaos loop must not.
    """

    def __init__(
        self, size: int = 3, *, base_dirs: Sequence[Path] | None = None, slim: bool = True
    ) -> None:
        if base_dirs is None:
            base_dirs = [new_base_dir(f"faults-mq{i}-") for i in range(size)]
        if len(base_dirs) != size:
            raise ValueError(f"{size} nodes need {size} base directories")
        cookie = secrets.token_hex(20).upper()
        epmd_port = free_port()
        prefix = f"faults-{secrets.token_hex(3)}"
        self.nodes = [
            PrivateRabbit(
                Path(base_dir),
                node_name=f"{prefix}-{i}@localhost",
                epmd_port=epmd_port,
                slim=slim,
                cookie=cookie,
                start_epmd=i == 0,  # node 0's epmd serves them all
            )
            for i, base_dir in enumerate(base_dirs)
        ]

    def __repr__(self) -> str:
        states = ", ".join("up" if node.running else "down" for node in self.nodes)
        return f"<{type(self).__name__} {states}>"

    def urls(self) -> list[str]:
        """The AMQP URL of every node, node 0 first."""
        return [node.url() for node in self.nodes]

    def url(self) -> str:
        """Every node's URL, comma-separated: the service's ``AMQP_URL`` for this cluster."""
        return ",".join(self.urls())

    @property
    def running(self) -> list[int]:
        """Indexes of the nodes whose server process is alive."""
        return [i for i, node in enumerate(self.nodes) if node.running]

    def start(self, timeout: float = 180) -> None:
        """Start every node and form the cluster; returns once all of them run in it."""
        first, *others = self.nodes
        first.start(timeout)
        errors: list[BaseException] = []

        def start_node(node: PrivateRabbit) -> None:
            try:
                node.start(timeout)
            except BaseException as exc:
                errors.append(exc)

        # Side by side: a start is mostly waiting for the VM to boot.
        threads = [threading.Thread(target=start_node, args=(node,)) for node in others]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        for node in others:
            node.ctl("stop_app", timeout=timeout)
            node.ctl("join_cluster", first.node_name, timeout=timeout)
            node.ctl("start_app", timeout=timeout)
        self.wait_running(timeout)

    def cluster_nodes(self) -> set[str]:
        """The running members of the cluster, as a running node sees them."""
        status = json.loads(self._any_running().ctl("cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def wait_running(self, timeout: float = 120) -> None:
        """Wait until every node answers AMQP and runs in the cluster."""
        deadline = time.monotonic() + timeout
        names = {node.node_name for node in self.nodes}
        while True:
            try:
                if all(_amqp_ready(n.port) for n in self.nodes) and self.cluster_nodes() == names:
                    return
            except (RuntimeError, subprocess.TimeoutExpired, ValueError, KeyError):
                pass  # a node between states; ask again
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not formed after {timeout}s: {self!r}")
            time.sleep(0.2)

    def queue_members(self, queue: str) -> dict[str, list[str]]:
        """A quorum queue's ``members``, ``online`` members and ``leader`` (a one-item list),
        by node name, as ``rabbitmqctl list_queues`` reports them."""
        output = self._any_running().ctl(
            "list_queues", "name", "type", "members", "online", "leader", "--formatter", "json"
        )
        for row in json.loads(output):
            if row["name"] == queue:
                leader = row.get("leader")
                return {
                    "type": [str(row["type"])],
                    "members": sorted(row.get("members") or []),
                    "online": sorted(row.get("online") or []),
                    "leader": [leader] if isinstance(leader, str) and leader else [],
                }
        raise KeyError(f"no queue {queue!r}")

    def kill_node(self, index: int) -> None:
        """SIGKILL node ``index`` (its Erlang VM and port programs)."""
        self.nodes[index].kill()

    def stop_node(self, index: int) -> None:
        """Stop node ``index`` gracefully."""
        self.nodes[index].stop()

    def start_node(self, index: int, timeout: float = 120) -> None:
        """Start node ``index`` again; it rejoins the cluster by itself."""
        self.nodes[index].start(timeout)

    def global_counters(self) -> dict[str, int]:
        """Node-wide AMQP 0-9-1 message counters summed over the running nodes (since each
        node's start): ``messages_delivered_total``, ``messages_confirmed_total``, ..."""
        return sum_counters(node.global_counters() for node in self.nodes if node.running)

    def _any_running(self) -> PrivateRabbit:
        for node in self.nodes:
            if node.running and _amqp_ready(node.port):
                return node
        raise RuntimeError("no node of the cluster is running")

    def cleanup(self) -> None:
        """Kill every node and remove their directories (node 0, the epmd's owner, last)."""
        for node in reversed(self.nodes):
            node.cleanup()


def sum_counters(counters: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for each in counters:
        for key, value in each.items():
            total[key] = total.get(key, 0) + value
    return total


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--watchdog":
        _watchdog_main(Path(sys.argv[2]))
    else:
        sys.exit(f"usage: {sys.argv[0]} --watchdog BASE_DIR")
