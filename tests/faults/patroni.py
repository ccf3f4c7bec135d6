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
are Patroni's documented knobs for a fast failover on a quiet network (``ttl`` 6 s,
``loop_wait`` 1 s, ``retry_timeout`` 2 s: ``loop_wait + 2 * retry_timeout <= ttl``): a
primary whose Patroni stops renewing its leader key (a dead or frozen host) is replaced at
most ``ttl`` seconds later; one whose Patroni stops cleanly hands over at once.
``use_pg_rewind`` lets a former primary rejoin as a standby of the new one.
"""

from __future__ import annotations

import atexit
import json
import secrets
import signal
import socket
import subprocess
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

    def __init__(self, base_dir: Path, address: str = "127.0.0.1") -> None:
        super().__init__(base_dir)
        self.address = address  # where the nodes reach it
        self.port = free_port()
        self.peer_port = free_port()
        self.log_file = self.base_dir / "etcd.log"

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self, timeout: float = 60) -> None:
        self._prepare_base_dir()
        data = self.base_dir / "data"
        data.mkdir(mode=0o700, exist_ok=True)
        self._chown(data)
        client = f"http://{self.address}:{self.port}"
        listen = ",".join(sorted({client, f"http://127.0.0.1:{self.port}"}))
        peer = f"http://127.0.0.1:{self.peer_port}"
        self._spawn(
            [
                ETCD,
                "--name=faults",
                f"--data-dir={data}",
                f"--listen-client-urls={listen}",
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

    def __init__(
        self,
        base_dir: Path,
        index: int,
        etcd: PrivateEtcd,
        *,
        address: str = "127.0.0.1",
        netns: str | None = None,
        clients: str = "127.0.0.1/32",
    ) -> None:
        super().__init__(base_dir)
        self.node_name = f"node{index}"
        self.etcd = etcd
        self.address = address  # PostgreSQL and the REST API listen here
        self.netns = netns  # the network namespace Patroni and PostgreSQL run in, if any
        self.clients = clients  # the addresses pg_hba trusts
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
                "listen": f"{self.address}:{self.api_port}",
                "connect_address": f"{self.address}:{self.api_port}",
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
                "listen": f"{self.address}:{self.port}",
                "connect_address": f"{self.address}:{self.port}",
                "data_dir": str(self.data_dir),
                "bin_dir": str(PG_BIN),
                "pgpass": str(self.socket_dir / "pgpass"),
                "authentication": {"superuser": trust, "replication": trust, "rewind": trust},
                "pg_hba": [
                    "local all all trust",
                    f"host all all {self.clients} trust",
                    f"host replication all {self.clients} trust",
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
            self._wait_ready(self._api_answers, timeout=timeout, logs=[self.log_file])

    def _as_user(self, argv: list[str]) -> list[str]:
        argv = super()._as_user(argv)
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def _api_answers(self) -> bool:
        try:
            with socket.create_connection((self.address, self.api_port), timeout=1):
                return True
        except OSError:
            return False

    def status(self) -> dict[str, Any] | None:
        """Patroni's view of this node (``GET /patroni``), or None if it does not answer."""
        try:
            with urllib.request.urlopen(
                f"http://{self.address}:{self.api_port}/patroni", timeout=1
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

    def __init__(self, size: int = 3, *, network: bool = False) -> None:
        """``network``: each node in a network namespace of its own on a private bridge (see
        :class:`PrivateNetwork`), so that one can be cut off; otherwise all on 127.0.0.1."""
        self.network = PrivateNetwork(size) if network else None
        self.etcd = PrivateEtcd(
            new_base_dir("faults-etcd-"),
            address=self.network.bridge_address if self.network else "127.0.0.1",
        )
        self.nodes = [
            PatroniNode(
                new_base_dir(f"faults-patroni{i}-"),
                i,
                self.etcd,
                **(
                    {
                        "address": self.network.address(i),
                        "netns": self.network.netns(i),
                        "clients": self.network.cidr,
                    }
                    if self.network
                    else {}
                ),
            )
            for i in range(size)
        ]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.roles()}>"

    def url(self, dbname: str = "postgres") -> str:
        """A multi-host URL naming every node: the service's ``DATABASE_URL``."""
        hosts = ",".join(f"{node.address}:{node.port}" for node in self.nodes)
        return f"postgresql://postgres@{hosts}/{dbname}?target_session_attrs=read-write"

    def start(self, timeout: float = 120) -> None:
        """Start etcd and every node; returns once there is a primary and a synchronous
        standby streaming from it, and every node runs."""
        if self.network is not None and not self.network.created:
            self.network.create()
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
        primary = self.primary()
        return psql(primary.address, primary.port, sql, dbname)

    def cut_off(self, node: PatroniNode) -> None:
        """A network partition: the node can reach nothing, and nothing reaches it."""
        assert self.network is not None, "a cluster made with network=True"
        self.network.cut(self.nodes.index(node))

    def reconnect(self, node: PatroniNode) -> None:
        assert self.network is not None
        self.network.heal(self.nodes.index(node))

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
        self.etcd.cleanup()
        if self.network is not None:
            self.network.cleanup()

    def logs(self) -> Sequence[Path]:
        return [node.log_file for node in self.nodes] + [self.etcd.log_file]


def psql(host: str, port: int, sql: str, dbname: str = "postgres") -> str:
    argv = [str(PG_BIN / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1"]
    argv += ["-h", host, "-p", str(port), "-U", "postgres", "-d", dbname]
    result = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"psql exited with {result.returncode}: {result.stderr}")
    return result.stdout


class PrivateNetwork:
    """Network namespaces on a private bridge: node ``i`` at ``10.213.N.(i + 2)`` in a
    namespace of its own, the test's own namespace at ``10.213.N.1`` on the bridge (where etcd
    listens and the service connects from). :meth:`cut` takes a node's link down: a partition,
    in which packets are dropped, not refused (as across a failed switch). Made with
    ``ip`` from iproute2; needs CAP_NET_ADMIN (tests run as root). Removed by :meth:`cleanup`
    (and at exit); a test process killed outright leaves them, named ``faults-*`` and
    ``fbr*`` (``ip netns list``, ``ip link``), for the next run to ignore."""

    def __init__(self, size: int) -> None:
        tag = secrets.token_hex(2)
        self.size = size
        self.subnet = 10 + secrets.randbelow(240)
        self.bridge = f"fbr{tag}"
        self._tag = tag
        self.created = False
        atexit.register(self.cleanup)

    @property
    def cidr(self) -> str:
        return f"10.213.{self.subnet}.0/24"

    @property
    def bridge_address(self) -> str:
        return f"10.213.{self.subnet}.1"

    def address(self, index: int) -> str:
        return f"10.213.{self.subnet}.{index + 2}"

    def netns(self, index: int) -> str:
        return f"faults-{self._tag}-{index}"

    def _host_link(self, index: int) -> str:
        return f"fh{self._tag}{index}"

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def create(self) -> None:
        self.created = True
        self._ip("link", "add", self.bridge, "type", "bridge")
        self._ip("addr", "add", f"{self.bridge_address}/24", "dev", self.bridge)
        self._ip("link", "set", self.bridge, "up")
        for i in range(self.size):
            ns, host, peer = self.netns(i), self._host_link(i), f"fn{self._tag}{i}"
            self._ip("netns", "add", ns)
            self._ip("link", "add", host, "type", "veth", "peer", "name", peer)
            self._ip("link", "set", host, "master", self.bridge, "up")
            self._ip("link", "set", peer, "netns", ns)
            self._ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", peer)
            self._ip("-n", ns, "link", "set", peer, "up")
            self._ip("-n", ns, "link", "set", "lo", "up")

    def cut(self, index: int) -> None:
        self._ip("link", "set", self._host_link(index), "down")

    def heal(self, index: int) -> None:
        self._ip("link", "set", self._host_link(index), "up")

    def cleanup(self) -> None:
        """Remove the namespaces and the bridge (a namespace's veth goes with it)."""
        if self.created:
            for i in range(self.size):
                subprocess.run(["ip", "netns", "del", self.netns(i)], capture_output=True)
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
            self.created = False
        atexit.unregister(self.cleanup)
