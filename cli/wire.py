"""A minimal HTTP/1.1 client on a socket, for the CLI's plain-http requests.

`urllib.request` costs about 40 ms of start-up CPU here (it pulls in email, tempfile,
ipaddress...), a third of a command's whole budget; this speaks just enough HTTP for
our own API: one request per connection, Content-Length or chunked bodies, streamed.
https URLs go through `urllib.request` (TLS is the expensive part then anyway).
"""

import socket
from urllib.parse import urlsplit


class Response:
    def __init__(self, status: int, reason: str, headers: dict, stream):
        self.status, self.reason, self.headers, self._f = status, reason, headers, stream

    def chunks(self):
        """The body as it arrives."""
        f = self._f
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(f.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    f.readline()
                    return
                yield f.read(size)
                f.readline()
        elif "content-length" in self.headers:
            yield f.read(int(self.headers["content-length"]))
        else:
            while chunk := f.read1(65536):
                yield chunk

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def lines(self):
        rest = b""
        for chunk in self.chunks():
            rest += chunk
            *done, rest = rest.split(b"\n")
            yield from done
        if rest:
            yield rest

    def close(self) -> None:
        self._f.close()


def request(url: str, method: str, target: str, headers: dict, body: bytes | None = None,
            timeout: float | None = 30) -> Response:
    """Send one request to `url` (scheme://host:port[/prefix]) for `target` (path?query).

    Raises OSError (connection refused, timeout) for the caller to report.
    """
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    # an ASCII host goes as bytes: a str would be IDNA-encoded, which imports the codec
    address: tuple = (host.encode() if host.isascii() else host, port)  # typeshed allows str only; bytes works
    sock = socket.create_connection(address, timeout=timeout)
    head = [f"{method} {u.path.rstrip('/')}{target} HTTP/1.1", f"Host: {u.netloc}", "Connection: close",
            "Accept-Encoding: identity", *(f"{k}: {v}" for k, v in headers.items())]
    if body is not None:
        head.append(f"Content-Length: {len(body)}")
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b""))
    f = sock.makefile("rb")
    sock.close()  # the file keeps the connection open
    status_line = f.readline().decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        f.close()
        raise ConnectionError(f"not an HTTP answer: {status_line.strip()[:80]!r}")
    fields = {}
    while (line := f.readline()) not in (b"\r\n", b"\n", b""):
        key, _, value = line.decode("latin-1").partition(":")
        fields[key.strip().lower()] = value.strip()
    return Response(int(parts[1]), parts[2].strip() if len(parts) > 2 else "", fields, f)
