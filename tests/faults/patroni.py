"""A private PostgreSQL cluster managed by Patroni, for the high-availability fault run.

* :class:`PrivateEtcd` - one etcd 3.4 member, the cluster's consensus store (DCS);
* :class:`PatroniNode` - one Patroni daemon and the PostgreSQL 15 server it runs;
* :class:`PrivatePatroniCluster` - an etcd and three nodes (by default) in strict synchronous
  mode: one primary, one synchronous standby, one more standby ready to become synchronous.

Everything comes from Debian's packages (``patroni``, ``etcd-server``), listens on 127.0.0.1
on private ports, and keeps its data under its own base directory, so the machine's PostgreSQL
is never touched. Processes run as ``postgres`` / ``etcd`` through ``setpriv`` and are cleaned
up like :mod:`tests.faults.cluster`'s (pid records, a watchdog, :mod:`atexit`).

The dynamic settings are the compose profile's (``deploy/patroni/patroni.yml``). Its timings
are Patroni's documented knobs for a fast failover on a quiet network (``ttl`` 8 s,
``loop_wait`` 1 s, ``retry_timeout`` 3 s: ``loop_wait + 2 * retry_timeout <= ttl``): a
primary whose Patroni stops renewing its leader key (a dead or frozen host) is replaced at
most ``ttl`` seconds later; one whose Patroni stops cleanly hands over at once.
``use_pg_rewind`` lets a former primary rejoin as a standby of the new one.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.faults.cluster import (
    PG_BIN,
    _await_gone,
    _descendants,
    _kill_tree,
    _PrivateService,
    _record_pid,
    _signal,
    _tails,
    _tcp_ready,
    free_port,
    new_base_dir,
)
from tests.support import ROOT

ETCD = "/usr/bin/etcd"
PATRONI = "/usr/bin/patroni"
SCOPE = "images-ha"

# Patroni's dynamic configuration, written to etcd by the node that bootstraps the cluster:
# the compose profile ``ha``'s own, so that what runs there is what this run tested.
PATRONI_YML = ROOT / "deploy" / "patroni" / "patroni.yml"
DCS: dict[str, Any] = yaml.safe_load(PATRONI_YML.read_text())["bootstrap"]["dcs"]
TTL = int(DCS["ttl"])


class PrivateEtcd(_PrivateService):
    """A one-member etcd cluster on private client and peer ports."""

    user = "etcd"
    name = "etcd"

    def __init__(self, base_dir: Path) -> None:
        super().__init__(base_dir)
        self.port = free_port()
        self.peer_port = free_port()
        self.log_file = self.base_dir / "etcd.log"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        self._prepare_base_dir()
        data = self.base_dir / "data"
        data.mkdir(mode=0o700, exist_ok=True)
        self._chown(data)
        client = f"http://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self._spawn(
            [
                ETCD,
                "--name=faults",
                f"--data-dir={data}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=faults={peer}",
                "--initial-cluster-state=new",
                "--enable-v2=true",
            ],
            log=self.log_file,
        )
        self._wait_ready(self._healthy, timeout=timeout, logs=[self.log_file])

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as answer:
                return bool(json.load(answer).get("health") == "true")
        except (OSError, ValueError):
            return False


class PatroniNode(_PrivateService):
    """One Patroni daemon and the PostgreSQL server it manages (its child process)."""

    user = "postgres"
    name = "patroni"

    def __init__(self, base_dir: Path, index: int, etcd: PrivateEtcd) -> None:
        super().__init__(base_dir)
        self.node_name = f"node{index}"
        self.etcd = etcd
        self.port = free_port()  # PostgreSQL
        self.api_port = free_port()  # Patroni's REST API
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "run"
        self.log_file = self.base_dir / "patroni.log"
        self.config_file = self.base_dir / "patroni.yml"

    def _config(self) -> dict[str, Any]:
        trust = {"username": "postgres"}
        return {
            "scope": SCOPE,
            "name": self.node_name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"127.0.0.1:{self.api_port}",
                "connect_address": f"127.0.0.1:{self.api_port}",
            },
            # etcd's v2 API: Patroni 3.0.2 (Debian 12) renews its leader key there by
            # compare-and-swap on its own name, where its v3 client, after a pause longer than
            # the ttl (a frozen host), takes a new lease and overwrites the key another node
            # holds - two primaries.
            "etcd": {"hosts": [self.etcd.endpoint]},
            "bootstrap": {
                "dcs": DCS,
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, {"auth": "trust"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.port}",
                "connect_address": f"127.0.0.1:{self.port}",
                "data_dir": str(self.data_dir),
                "bin_dir": str(PG_BIN),
                "pgpass": str(self.socket_dir / "pgpass"),
                "authentication": {"superuser": trust, "replication": trust, "rewind": trust},
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication all 127.0.0.1/32 trust",
                ],
                "parameters": {
                    "unix_socket_directories": str(self.socket_dir),
                    "logging_collector": "off",
                    "log_line_prefix": "%m [%p] %q%u@%d ",
                },
            },
        }

    def start(self, timeout: float = 60) -> None:
        """Start Patroni; returns once its REST API answers (PostgreSQL may still be starting:
        the cluster waits for roles)."""
        if self.running:
            raise RuntimeError(f"{self.node_name} is already running")
        with self._timed("start"):
            self._prepare_base_dir()
            for path in (self.data_dir, self.socket_dir):
                path.mkdir(mode=0o700, exist_ok=True)
                self._chown(path)
            self.config_file.write_text(json.dumps(self._config(), indent=2))
            self._spawn([PATRONI, str(self.config_file)], log=self.log_file)
            self._wait_ready(
                lambda: _tcp_ready(self.api_port), timeout=timeout, logs=[self.log_file]
            )

    def status(self) -> dict[str, Any] | None:
        """Patroni's view of this node (``GET /patroni``), or None if it does not answer."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.api_port}/patroni", timeout=1
            ) as answer:
                return dict(json.load(answer))
        except urllib.error.HTTPError as exc:  # 503 still carries the status
            try:
                return dict(json.load(exc))
            except ValueError:
                return None
        except (OSError, ValueError):
            return None

    def postmaster(self) -> int | None:
        """The pid of this node's PostgreSQL server, if it runs.

        Patroni detaches the postmaster it starts (so that a restart of Patroni leaves
        PostgreSQL up): it is not Patroni's child. Once seen, it is recorded with the
        node's other processes, so that a cleanup, or the watchdog, kills it too.
        """
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return None
        if str(self.data_dir).encode() not in cmdline:
            return None  # a stale file, its pid now another process's
        _record_pid(self.base_dir, "postmaster", pid)
        return pid

    def _roots(self) -> list[int]:
        return [pid for pid in (self.pid, self.postmaster()) if pid is not None]

    def kill(self) -> None:
        """The host dies: Patroni and every PostgreSQL process SIGKILLed at once."""
        self._require_running()
        with self._timed("kill"):
            roots = self._roots()
            for root in roots:
                _signal(root, signal.SIGSTOP)
            pids = [pid for root in roots for pid in _kill_tree(root)]
            self._wait_exit(10)
            _await_gone(pids, timeout=10)

    def stop(self, timeout: float = 60) -> None:
        """A clean stop: Patroni shuts PostgreSQL down and gives up the leader key."""
        self._require_running()
        with self._timed("stop"):
            _signal(self.pid, signal.SIGTERM)
            self._wait_exit(timeout)

    def freeze(self) -> None:
        """The host hangs: Patroni and PostgreSQL SIGSTOPped, their sockets left open."""
        self._require_running()
        for root in self._roots():
            for pid in [root, *_descendants(root)]:
                _signal(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for root in self._roots():
            for pid in [root, *_descendants(root)]:
                _signal(pid, signal.SIGCONT)

    def cleanup(self) -> None:
        self.postmaster()  # recorded, so killed with the rest
        super().cleanup()


class PrivatePatroniCluster:
    """An etcd and ``size`` Patroni nodes in strict synchronous mode."""

    def __init__(self, size: int = 3) -> None:
        self.etcd = PrivateEtcd(new_base_dir("faults-etcd-"))
        self.nodes = [
            PatroniNode(new_base_dir(f"faults-patroni{i}-"), i, self.etcd) for i in range(size)
        ]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.roles()}>"

    def url(self, dbname: str = "postgres") -> str:
        """A multi-host URL naming every node: the service's ``DATABASE_URL``."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"postgresql://postgres@{hosts}/{dbname}?target_session_attrs=read-write"

    def start(self, timeout: float = 120) -> None:
        """Start etcd and every node; returns once there is a primary and a synchronous
        standby streaming from it, and every node runs."""
        self.etcd.start()
        first, *others = self.nodes
        first.start()
        self.wait_for(lambda roles: roles.get(first.node_name) == "primary", timeout, "a leader")
        for node in others:
            node.start()
        self.wait_healthy(timeout)

    def roles(self) -> dict[str, str]:
        """Each answering node's role and state as Patroni reports it: ``primary``,
        ``sync_standby`` (a synchronous standby streaming), ``standby`` (streaming, not
        synchronous), or what else it is doing (``starting``, ``stopped``, ...)."""
        roles: dict[str, str] = {}
        sync: set[str] = set()
        for node in self.nodes:
            if not node.running or (status := node.status()) is None:
                continue
            state = status.get("state")
            role = status.get("role")
            if state != "running":
                roles[node.node_name] = str(state)
            elif role in ("master", "primary"):
                roles[node.node_name] = "primary"
                sync.update(
                    str(row.get("application_name"))
                    for row in status.get("replication", [])
                    if row.get("sync_state") == "sync"
                )
            elif status.get("replication_state", "streaming") == "streaming":
                roles[node.node_name] = "standby"
            else:
                roles[node.node_name] = str(status.get("replication_state"))
        for name in sync & set(roles):
            if roles[name] == "standby":
                roles[name] = "sync_standby"
        return roles

    def wait_for(self, ready: Any, timeout: float, what: str) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            roles = self.roles()
            if ready(roles):
                return roles
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} after {timeout}s: {roles}{_tails(self.logs())}")
            time.sleep(0.2)

    def wait_healthy(self, timeout: float = 120) -> dict[str, str]:
        """Until every running node serves: one primary, one synchronous standby, the rest
        standbys."""
        running = {node.node_name for node in self.nodes if node.running}
        for node in self.nodes:
            node.postmaster()  # recorded for the cleanup as soon as it runs

        def healthy(roles: dict[str, str]) -> bool:
            values = sorted(roles.values())
            return (
                set(roles) == running
                and values.count("primary") == 1
                and values.count("sync_standby") == 1
                and all(v in ("primary", "sync_standby", "standby") for v in values)
            )

        return self.wait_for(healthy, timeout, "healthy cluster")

    def primary(self) -> PatroniNode:
        roles = self.roles()
        for node in self.nodes:
            if roles.get(node.node_name) == "primary":
                return node
        raise RuntimeError(f"no primary: {roles}")

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """SQL on the current primary (psql's unaligned, tuples-only output)."""
        return psql(self.primary().port, sql, dbname)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
        self.etcd.cleanup()

    def logs(self) -> Sequence[Path]:
        return [node.log_file for node in self.nodes] + [self.etcd.log_file]


def psql(port: int, sql: str, dbname: str = "postgres") -> str:
    import subprocess

    argv = [str(PG_BIN / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1"]
    argv += ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", dbname]
    result = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"psql exited with {result.returncode}: {result.stderr}")
    return result.stdout
