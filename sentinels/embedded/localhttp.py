"""The router's HTTP client: keep-alive HTTP/1.1 POSTs to the functions on this machine.

Every event the embedded broker delivers is one POST to a local function, a dozen per
job. httpx spent 1.3 ms of CPU on each (the router was the busiest process of a burst);
this speaks just the HTTP our functions answer (Content-Length or chunked bodies) in a
tenth of that. Idle connections are closed before uvicorn's keep-alive timeout; one that
the server closed anyway is noticed before any answer arrived and the request goes again
on a new connection (a delivery is at-least-once in any case).
"""

import asyncio
import time
from urllib.parse import urlsplit

IDLE_SECONDS = 2.0  # uvicorn closes idle connections after 5 s: ours are dropped first
MAX_IDLE = 32  # idle connections kept per function


class Answer:
    def __init__(self, status: int, body: bytes):
        self.status_code, self.content = status, body

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")


class _Closed(ConnectionError):
    """The server closed a kept-alive connection before answering (it never read the request)."""


async def _body(reader: asyncio.StreamReader, fields: dict) -> bytes:
    if fields.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readline()
    if "content-length" in fields:
        return await reader.readexactly(int(fields["content-length"]))
    fields["connection"] = "close"  # the body ends with the connection
    return await reader.read()


class LocalHttp:
    def __init__(self, timeout: float = 30.0):
        self.timeout = timeout
        self._idle: dict[tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]]] = {}

    async def _connection(self, host: str, port: int):
        """(reader, writer, reused): the most recently used idle connection, else a new one."""
        idle = self._idle.get((host, port)) or []
        now = time.monotonic()
        while idle:
            reader, writer, since = idle.pop()
            if now - since < IDLE_SECONDS and not writer.is_closing() and not reader.at_eof():
                return reader, writer, True
            writer.close()
        reader, writer = await asyncio.open_connection(host, port)
        return reader, writer, False

    async def _exchange(self, reader, writer, head: bytes, body: bytes, reused: bool) -> tuple[Answer, bool]:
        writer.write(head + body)
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise _Closed("connection closed before an answer") if reused else \
                ConnectionError("the function closed the connection without answering")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise ConnectionError(f"not an HTTP answer: {status_line[:80]!r}")
        fields = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            fields[key.strip().lower()] = value.strip()
        data = await _body(reader, fields)
        keep = fields.get("connection", "").lower() != "close" and not parts[0].endswith(b"/1.0")
        return Answer(int(parts[1]), data), keep

    async def post(self, url: str, body: bytes, headers: dict) -> Answer:
        """POST `body` to `url`; raises OSError / ConnectionError / TimeoutError when no answer came."""
        u = urlsplit(url)
        host, port = u.hostname or "127.0.0.1", u.port or 80
        lines = [f"POST {u.path or '/'} HTTP/1.1", f"Host: {u.netloc}", f"Content-Length: {len(body)}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        while True:
            reader, writer, reused = await self._connection(host, port)
            try:
                answer, keep = await asyncio.wait_for(self._exchange(reader, writer, head, body, reused), self.timeout)
            except _Closed:
                writer.close()
                continue  # a stale kept-alive connection: again on another (a new one is never stale)
            except (ConnectionResetError, BrokenPipeError) if reused else ():  # the same, noticed while writing
                writer.close()
                continue
            except BaseException:
                writer.close()
                raise
            idle = self._idle.setdefault((host, port), [])
            if keep and len(idle) < MAX_IDLE:
                idle.append((reader, writer, time.monotonic()))
            else:
                writer.close()
            return answer

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for _, writer, _ in idle:
                writer.close()
        self._idle.clear()
