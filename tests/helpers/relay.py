"""A recording TCP relay for the transport test (COMPLIANCE CONF-2): every byte between a client and a server, in
both directions, passes through it and is kept, as an on-path observer would see it."""

from __future__ import annotations

import asyncio
import threading


class RecordingRelay:
    """Listens on 127.0.0.1 (an ephemeral port) and relays each connection to (host, port), recording both ways."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.to_server = bytearray()
        self.to_client = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        self._writers: list[asyncio.StreamWriter] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recording-relay", daemon=True)
        self.port = 0

    def __enter__(self) -> RecordingRelay:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the relay did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        """Close every relayed connection (both ends), then stop: the server sees its clients go away."""

        def close_all() -> None:
            for writer in self._writers:
                writer.close()
            self._loop.call_later(0.2, self._loop.stop)

        self._loop.call_soon_threadsafe(close_all)
        self._thread.join(timeout=10)

    def recorded(self) -> bytes:
        with self._lock:
            return bytes(self.to_server) + bytes(self.to_client)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        self._writers.append(client_w)
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        self._writers.append(server_w)
        await asyncio.gather(self._pipe(client_r, server_w, self.to_server),
                             self._pipe(server_r, client_w, self.to_client), return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray) -> None:
        try:
            while data := await reader.read(65536):
                with self._lock:
                    record.extend(data)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
