"""A real Redis Cluster of N masters (no replicas) on loopback ports, for tests.

    with redis_cluster(tmp_path) as cluster:
        client = redis.asyncio.cluster.RedisCluster.from_url(cluster.url)
        ...
        cluster.reshard(2000, cluster.ports[0], cluster.ports[1])

Each node is a `redis-server` child (the one on PATH; Redis 7 or newer, for
`--cluster-port`) with its own folder `<base_dir>/node-<port>` holding its
`nodes-<port>.conf` and its log `redis.log`. Nothing persists (`--save ''`, no AOF).
The cluster bus port is chosen free like the client port (`--cluster-port`), so a client
port above 55535 does not need the fixed +10000 bus port. On exit the servers are killed
(their process group); the folders are left for the caller's tmp_path to clean up, so
the logs can be read after a failure. Errors while starting or waiting name the nodes
and end with the tail of each node's log.

What a user of this helper needs to know (measured with Redis 7.0.15 and redis-py 8.2.0;
`tests/integration/test_cluster_harness.py` asserts each point):

* Detection: `INFO cluster` answers `cluster_enabled:1` on every node of a cluster and
  `cluster_enabled:0` on a standalone server.

* `redis-cli --cluster reshard` moves one slot at a time: `CLUSTER SETSLOT <slot>
  IMPORTING` on the target, `MIGRATING` on the source, `CLUSTER GETKEYSINSLOT` + `MIGRATE`
  in batches (`--cluster-pipeline`, 10 keys by default), then `CLUSTER SETSLOT <slot>
  NODE <target>` on every master. It is safe under traffic; 2,000 slots took 1 s idle,
  1.5 to 6 s under the test's traffic. `redis-cli --cluster check` exits 1 while a slot
  is left open (migrating / importing).

* Single-key commands during a reshard: redis-py's cluster clients (sync and asyncio)
  follow `MOVED` (slot map patched, command re-sent) and `ASK` (`ASKING` + the command on
  the target) by themselves; no error reaches the caller.

* Keys of one hash tag (one slot) in one command - multi-key commands and EVAL/EVALSHA
  alike, the script's KEYS being its keys - while that slot migrates:
  - source, all keys still there: served there;
  - source, some there and some missing: `TRYAGAIN` (redis.exceptions.TryAgainError,
    "Multiple keys request during rehashing of slot");
  - source, none there: `ASK` (redis.exceptions.AskError);
  - target after `ASKING`: served if all keys are there, else `TRYAGAIN`;
  - target without `ASKING`: `MOVED` back to the source.
  A key that exists nowhere yet (one the script is about to create) counts as missing,
  so EVALSHA with KEYS = (an existing key, a new key) is answered TRYAGAIN from the first
  to the last moment of that slot's migration. A TRYAGAIN'd script has not run: nothing
  was written, and retrying it is safe.

* redis-py absorbs TRYAGAIN for EVALSHA (and `register_script` objects, which also reload
  a script the target answers `NOSCRIPT` for) by retrying, within
  `RedisCluster.RedisClusterRequestTTL` = 16 attempts per call, the last 8 after 50 ms
  sleeps when TRYAGAIN. If the slot is still migrating after that, the call raises
  `redis.exceptions.ClusterError("TTL exhausted.")`, not TryAgainError: after about 0.4 s
  while the source answers TRYAGAIN (16 TRYAGAIN), after only about 0.1 s once the keys
  have moved (ASK, TRYAGAIN on the target, MOVED from the target without ASKING: 6 + 5 +
  5 attempts, few of them sleeping). A reshard of slots holding a few hundred keys each
  stays well within that: under traffic, every ASK/MOVED/TRYAGAIN was absorbed. A slot
  left half-migrated (a reshard killed midway, until `redis-cli --cluster fix`
  or `CLUSTER SETSLOT` closes it) makes
  every such call fail with ClusterError, which the caller must treat as retryable.

* Inside a script, a command on a key missing from a migrating slot fails the script
  with ResponseError "Script attempted to access a non local key in a cluster node", the
  commands before it staying applied: a script must declare every key it touches in
  KEYS, so that the checks above happen before it runs.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from stream.devstack.embedded import free_port, spawn, stop_process

HOST = "127.0.0.1"
SLOTS = 16384
START_TIMEOUT = 15.0
STABLE_TIMEOUT = 30.0
LOG_TAIL_CHARS = 2000


class ClusterError(AssertionError):
    """The cluster did not start, or did not settle, in time."""


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise ClusterError("redis-server is not on PATH")
    return found


def redis_cli_binary() -> str:
    found = shutil.which("redis-cli")
    if not found:
        raise ClusterError("redis-cli is not on PATH")
    return found


@dataclass
class _Node:
    port: int
    bus_port: int
    folder: Path
    proc: subprocess.Popen[bytes]

    @property
    def log_path(self) -> Path:
        return self.folder / "redis.log"

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return text[-LOG_TAIL_CHARS:]

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=5, decode_responses=True)


def _start_node(base_dir: Path, cluster_mode: bool, attempts: int = 5) -> _Node:
    """One redis-server on free ports, answering PING. Ports are retried if taken."""
    last_error = ""
    for _ in range(attempts):
        port = free_port()
        bus_port = free_port()
        if bus_port == port:
            continue
        folder = base_dir / f"node-{port}"
        folder.mkdir(parents=True, exist_ok=True)
        argv = [
            redis_server_binary(),
            "--port", str(port),
            "--bind", HOST,
            "--dir", str(folder),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
        ]  # fmt: skip
        if cluster_mode:
            argv += [
                "--cluster-enabled", "yes",
                "--cluster-port", str(bus_port),
                "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", "2000",
            ]  # fmt: skip
        proc = spawn(argv, folder / "redis.log")
        node = _Node(port, bus_port, folder, proc)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with node.client() as probe:
                    if probe.ping():
                        return node
            except redis.RedisError:
                time.sleep(0.05)
        stop_process(proc, grace=5)
        last_error = f"redis-server on port {port} did not answer:\n{node.log_tail()}"
        if "Address already in use" not in node.log_tail():
            break
    raise ClusterError(last_error)


def _parse_nodes(text: str) -> tuple[dict[str, int], dict[int, str], bool]:
    """CLUSTER NODES -> (node id -> port, slot -> owner id, whether any slot is open)."""
    ports: dict[str, int] = {}
    owners: dict[int, str] = {}
    open_slots = False
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        node_id, address = fields[0], fields[1]
        ports[node_id] = int(address.split("@")[0].rsplit(":", 1)[1])
        for item in fields[8:]:
            if item.startswith("["):
                open_slots = True
            elif "-" in item:
                first, last = item.split("-")
                for slot in range(int(first), int(last) + 1):
                    owners[slot] = node_id
            else:
                owners[int(item)] = node_id
    return ports, owners, open_slots


@dataclass
class Cluster:
    """A running cluster: its master ports, and a few admin operations for tests."""

    ports: list[int]
    _nodes: list[_Node] = field(repr=False)

    @property
    def urls(self) -> list[str]:
        return [f"redis://{HOST}:{port}" for port in self.ports]

    @property
    def url(self) -> str:
        return self.urls[0]

    def client(self, port: int) -> redis.Redis:
        """A plain (non-cluster) client of one node, decoding replies."""
        return redis.Redis(host=HOST, port=port, socket_timeout=5, decode_responses=True)

    def _cluster_nodes(self, port: int) -> str:
        with self.client(port) as node:
            # Two words: redis-py parses "CLUSTER NODES" into a dict, not "CLUSTER".
            return str(node.execute_command("CLUSTER", "NODES"))

    def node_ids(self) -> dict[int, str]:
        """Port -> node id (each node's `CLUSTER MYID`)."""
        ids: dict[int, str] = {}
        for port in self.ports:
            with self.client(port) as node:
                ids[port] = str(node.execute_command("CLUSTER MYID"))
        return ids

    def key_slot(self, key: str) -> int:
        with self.client(self.ports[0]) as node:
            return int(node.execute_command("CLUSTER KEYSLOT", key))

    def _views(self) -> dict[int, dict[int, int]]:
        """Each node's slot map, port -> slot -> owner port."""
        views: dict[int, dict[int, int]] = {}
        for port in self.ports:
            id_ports, owners, _ = _parse_nodes(self._cluster_nodes(port))
            views[port] = {slot: id_ports[owner] for slot, owner in owners.items()}
        return views

    def slot_owner(self, slot: int, timeout: float = 10.0) -> int:
        """The port of the master serving `slot`, once every node agrees on it."""
        deadline = time.monotonic() + timeout
        while True:
            seen = {port: view.get(slot) for port, view in self._views().items()}
            owners = {owner for owner in seen.values() if owner is not None}
            if len(owners) == 1 and None not in seen.values():
                return owners.pop()
            if time.monotonic() > deadline:
                raise ClusterError(f"nodes disagree on the owner of slot {slot}: {seen}")
            time.sleep(0.1)

    def slot_map(self, timeout: float = 10.0) -> list[int]:
        """The owner port of every slot (index = slot), once every node agrees on all."""
        deadline = time.monotonic() + timeout
        while True:
            views = self._views()
            maps = {tuple(view.get(slot, 0) for slot in range(SLOTS)) for view in views.values()}
            if len(maps) == 1:
                agreed = list(maps.pop())
                if 0 not in agreed:
                    return agreed
            if time.monotonic() > deadline:
                raise ClusterError(f"nodes disagree on the slot map ({len(maps)} views)")
            time.sleep(0.1)

    def problems(self) -> list[str]:
        """Why the cluster is not stable now (empty when it is): a node not `ok`, a slot
        open (migrating or importing), uncovered, or seen differently by two nodes."""
        found: list[str] = []
        maps: dict[int, dict[int, str]] = {}
        for port in self.ports:
            try:
                with self.client(port) as node:
                    info = str(node.execute_command("CLUSTER", "INFO"))
                text = self._cluster_nodes(port)
            except redis.RedisError as exc:
                found.append(f"{port}: {exc!r}")
                continue
            if "cluster_state:ok" not in info:
                found.append(f"{port}: not cluster_state:ok")
            _, owners, open_slots = _parse_nodes(text)
            if open_slots:
                found.append(f"{port}: has open (migrating/importing) slots")
            if len(owners) != SLOTS:
                found.append(f"{port}: covers {len(owners)} of {SLOTS} slots")
            maps[port] = owners
        if len({tuple(sorted(owners.items())) for owners in maps.values()}) > 1:
            found.append("nodes disagree on the slot map")
        return found

    def check(self) -> subprocess.CompletedProcess[str]:
        """`redis-cli --cluster check` against the first node."""
        return subprocess.run(
            [redis_cli_binary(), "--cluster", "check", f"{HOST}:{self.ports[0]}"],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def wait_stable(self, timeout: float = STABLE_TIMEOUT) -> None:
        """Poll until `problems()` is empty and `redis-cli --cluster check` passes."""
        deadline = time.monotonic() + timeout
        last: list[str] = []
        while time.monotonic() < deadline:
            last = self.problems()
            if not last:
                checked = self.check()
                if checked.returncode == 0 and "[ERR]" not in checked.stdout:
                    return
                last = [f"redis-cli --cluster check:\n{checked.stdout}{checked.stderr}"]
            time.sleep(0.1)
        raise ClusterError(
            f"cluster not stable after {timeout:.0f} s: " + "; ".join(last) + self.log_tails()
        )

    def log_tails(self) -> str:
        return "".join(
            f"\n--- node {node.port} ({node.log_path}):\n{node.log_tail()}" for node in self._nodes
        )

    def _reshard_argv(self, slots: int, from_port: int, to_port: int) -> list[str]:
        ids = self.node_ids()
        return [
            redis_cli_binary(),
            "--cluster", "reshard", f"{HOST}:{from_port}",
            "--cluster-from", ids[from_port],
            "--cluster-to", ids[to_port],
            "--cluster-slots", str(slots),
            "--cluster-yes",
        ]  # fmt: skip

    def reshard_async(
        self, slots: int, from_port: int, to_port: int, log_path: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start moving `slots` slots (with their keys) from one master to another; the
        caller waits for the process (then `wait_stable()`). Output goes to `log_path`,
        by default `<first node's folder>/../reshard-<from>-<to>.log`."""
        log = log_path or self._nodes[0].folder.parent / f"reshard-{from_port}-{to_port}.log"
        return spawn(self._reshard_argv(slots, from_port, to_port), log)

    def reshard(self, slots: int, from_port: int, to_port: int, timeout: float = 60) -> None:
        """Move `slots` slots with their keys and wait until the cluster is stable."""
        log = self._nodes[0].folder.parent / f"reshard-{from_port}-{to_port}.log"
        proc = self.reshard_async(slots, from_port, to_port, log)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(proc, grace=5)
            raise ClusterError(
                f"reshard not done after {timeout:.0f} s:\n{_tail(log)}{self.log_tails()}"
            ) from None
        if code != 0:
            raise ClusterError(f"reshard exited {code}:\n{_tail(log)}{self.log_tails()}")
        self.wait_stable()


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError as exc:
        return f"(no output: {exc})"


@contextlib.contextmanager
def redis_cluster(base_dir: Path, masters: int = 3) -> Iterator[Cluster]:
    """Start `masters` cluster-enabled redis-servers under `base_dir`, join them into one
    cluster (slots split evenly, no replicas), wait until it is stable, and yield it.
    The servers are killed on exit."""
    nodes: list[_Node] = []
    try:
        for _ in range(masters):
            nodes.append(_start_node(base_dir, cluster_mode=True))
        cluster = Cluster([node.port for node in nodes], nodes)
        addresses = [f"{HOST}:{node.port}" for node in nodes]
        argv = [redis_cli_binary(), "--cluster", "create", *addresses]
        argv += ["--cluster-replicas", "0", "--cluster-yes"]
        created = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise ClusterError(
                f"redis-cli --cluster create exited {created.returncode}:\n"
                f"{created.stdout[-LOG_TAIL_CHARS:]}{created.stderr}{cluster.log_tails()}"
            )
        cluster.wait_stable()
        yield cluster
    finally:
        for node in nodes:
            stop_process(node.proc, grace=5)


@contextlib.contextmanager
def standalone_redis(base_dir: Path) -> Iterator[str]:
    """One plain (non-cluster) redis-server under `base_dir`; yields its URL."""
    node = _start_node(base_dir, cluster_mode=False)
    try:
        yield f"redis://{HOST}:{node.port}"
    finally:
        stop_process(node.proc, grace=5)
