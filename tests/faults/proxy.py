"""A small TCP proxy for the fault suite, between a worker and Redis or the broker.

It runs an asyncio loop in a daemon thread of the test process and listens on a loopback
port of its own. Three things it can do, switched at any time from the test's thread:

- pass through (the default);
- `cut()`: drop every connection at once (RST) and stop listening, so that new
  connections are refused, until `restore()`; `outage(seconds)` does both;
- `set_delay(seconds)`: hold every chunk coming back from the server (the replies) that
  long before passing it on, in order; requests go through at once.

`arm(pattern, callback, follow)` calls `callback(chunk)` (in the proxy's thread) the
first time a chunk a client sends contains `pattern`, and for every chunk clients send
in the `follow` seconds after it: the zombie test stops a worker with it while
that worker's score script call is on its way to Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from stream.devstack.embedded import free_port

CHUNK = 1 << 16


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.server):
            if writer is not None:
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class Proxy:
    """`Proxy(target_port).start()`; clients connect to `127.0.0.1:port`."""

    def __init__(self, target_port: int, port: int = 0, name: str = "proxy") -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.name = name
        self.delay = 0.0
        self.accepted = 0  # connections taken while up
        self.refused = 0  # connections dropped at once while cut (the listener may lag)
        self._down = False
        self._links: set[_Link] = set()
        self._armed: tuple[bytes, Callable[[bytes], None]] | None = None
        self._follow = 0.0
        self._following: tuple[float, Callable[[bytes], None]] | None = None
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)

    # --- from the test's thread ------------------------------------------------------
    def start(self) -> Proxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def cut(self) -> None:
        """Drop every connection and refuse new ones until `restore()`."""
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen())

    def outage(self, seconds: float) -> tuple[float, float]:
        """Cut for `seconds`; the wall-clock times (time.time()) it began and ended."""
        began = time.time()
        self.cut()
        time.sleep(max(0.0, seconds - (time.time() - began)))
        self.restore()
        return began, time.time()

    def set_delay(self, seconds: float) -> None:
        self.delay = seconds

    def arm(self, pattern: bytes, callback: Callable[[bytes], None], follow: float = 0.0) -> None:
        self._follow = follow
        self._armed = (pattern, callback)

    @property
    def connections(self) -> int:
        return len(self._links)

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)  # type: ignore[arg-type]

    # --- in the proxy's thread -------------------------------------------------------
    async def _listen(self) -> None:
        self._down = False
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def _cut(self) -> None:
        self._down = True
        if self._server is not None:
            self._server.close()  # stop listening: new connections are refused
            self._server = None
        for link in list(self._links):
            link.abort()
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down:
            self.refused += 1
            writer.transport.abort()
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                return  # the server is down: so is this connection
            link.server = up_writer
            if self._down:  # cut while connecting
                return
            self.accepted += 1
            link.tasks = [
                asyncio.create_task(self._pump(reader, up_writer, requests=True)),
                asyncio.create_task(self._pump(up_reader, writer, requests=False)),
            ]
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            link.abort()
            self._links.discard(link)

    def _tap(self, data: bytes) -> None:
        if self._following is not None:
            until, callback = self._following
            if time.monotonic() <= until:
                callback(data)
            else:
                self._following = None
        if self._armed is not None and self._armed[0] in data:
            callback = self._armed[1]
            self._armed = None
            self._following = (time.monotonic() + self._follow, callback)
            callback(data)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, requests: bool
    ) -> None:
        """Copy one direction; replies wait `delay` each (in order, read meanwhile)."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                try:
                    data = await src.read(CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    break
                if requests:
                    self._tap(data)
                delay = 0.0 if requests else self.delay
                await queue.put((loop.time() + delay, data))
                if sender.done():
                    break
            await queue.put((0.0, b""))
            with contextlib.suppress(ConnectionError, OSError):
                await sender
        finally:
            sender.cancel()
