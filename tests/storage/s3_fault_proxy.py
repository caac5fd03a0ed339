"""A fault-injecting HTTP proxy on loopback, in front of a real S3 endpoint (moto's server): test
infrastructure for "the S3 endpoint fails".

The proxy forwards every request to the upstream endpoint unchanged and, following rules that a
test changes while the proxy runs, injects the faults a real object store shows:

- ``error``: answer a status (503 ``SlowDown``, 500 ``InternalError``, 403 ``AccessDenied``...) with
  an S3 XML error body. ``when="before"``: the request never reaches the server; ``when="after"``:
  it is forwarded (a write lands) and its response is replaced by the error (the client believes
  it failed).
- ``delay``: forward, then hold the response for ``delay_s`` seconds (a slow server).
- ``reset``: ``when="before"``: reset the connection (TCP RST) once the request is read, without
  forwarding it; ``when="after"``: forward it, send half the response, then reset.
- ``down``: on this request (not forwarded) the endpoint goes down for ``delay_s`` seconds, as
  :meth:`FaultProxy.go_down`: a restart at a chosen moment, e.g. in the middle of a publish.

A rule fires on the next ``count`` matching requests, or on each with probability ``p`` (a seeded
generator: the same seed and request sequence give the same faults), or on every one; it can be
limited to some methods, to paths matching a regular expression and to requests carrying a header
(``header="If-None-Match"``: what an S3-compatible server that lacks a feature answers ``501
NotImplemented`` to, naming the header in its error document). :meth:`FaultProxy.go_down`
closes the listening socket and every open connection (clients get "connection refused") and
listens again on the same port after a while: the endpoint restarting (:meth:`restart` does it at
once, or ends a down window early). :meth:`deny_writes` turns the bucket read-only (403 on
PUT/POST/DELETE). :meth:`ignore_conditional_writes` makes the endpoint one of the S3-compatible
servers that ignore ``If-None-Match: *`` on a PUT and overwrite (MinIO releases older than
mid-2024, for one): the header is dropped before forwarding, so moto writes whether or not the
key exists. ``counts`` records what was forwarded and injected, ``methods`` the requests by method.

Standard library only; every socket is on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

WRITE_METHODS = frozenset({"PUT", "POST", "DELETE"})
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade", "expect", "trailer"}
_REASONS = {403: "Forbidden", 404: "Not Found", 500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}
_MESSAGES = {"SlowDown": "Please reduce your request rate.",
             "InternalError": "We encountered an internal error. Please try again.",
             "ServiceUnavailable": "Service is unable to handle request.",
             "AccessDenied": "Access Denied",
             "NotImplemented": "A header you provided implies functionality that is not implemented"}
_ACTIONS = ("error", "delay", "reset", "down")


@dataclass
class Rule:
    """One kind of fault and the requests it applies to (see the module docstring).

    ``path`` is a regular expression searched in the unquoted request target
    (``/bucket/key?query``); ``header`` a request header the request must carry (any case); an
    error it answers names it in its S3 error document (``<Header>``), as AWS does for a
    ``NotImplemented``. ``fired`` counts the requests this rule has hit.
    """

    action: str
    status: int = 503
    code: str = "SlowDown"
    when: str = "before"
    delay_s: float = 0.0
    methods: frozenset[str] | None = None
    path: str | None = None
    count: int | None = None
    p: float | None = None
    header: str | None = None
    fired: int = 0

    def __post_init__(self) -> None:
        if self.action not in _ACTIONS:
            raise ValueError(f"rule action {self.action!r} is not one of {_ACTIONS}")
        if self.when not in ("before", "after"):
            raise ValueError(f"rule when={self.when!r} must be 'before' or 'after'")
        if self.methods is not None:
            self.methods = frozenset(m.upper() for m in self.methods)

    def matches(self, method: str, target: str, headers: list[tuple[str, str]] | None = None) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.header is not None and not any(name.lower() == self.header.lower() for name, _ in headers or []):
            return False
        return self.path is None or re.search(self.path, target) is not None

    @property
    def spent(self) -> bool:
        return self.count is not None and self.fired >= self.count


@dataclass
class _Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    close: bool


class FaultProxy:
    """A threaded HTTP/1.1 proxy on ``127.0.0.1`` in front of ``upstream`` (``http://host:port``).

    Use as a context manager or call :meth:`start` / :meth:`stop`. ``url`` is the endpoint clients
    use. Rules are applied in the order added; the first that matches and fires decides.
    """

    def __init__(self, upstream: str, seed: int = 0, port: int = 0):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream {upstream!r} must be http://host:port")
        self._upstream = (parts.hostname, parts.port)
        self._port = port
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._stopped = threading.Event()
        self._up = threading.Event()
        self._generation = 0
        self._ignore_conditions = False
        self.counts: Counter[str] = Counter()
        #: Requests received by HTTP method (``HEAD``, ``GET``, ``PUT``...; a GET that lists a
        #: bucket, ListObjectsV2, counts as ``LIST``), faults included.
        self.methods: Counter[str] = Counter()

    # ------------------------------------------------------------- control
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> "FaultProxy":
        self._stopped.clear()
        self._listen()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._close_listener()
        self._drop_connections()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add(self, rule: Rule) -> Rule:
        """Apply ``rule`` from now on (after the rules already there); returns it."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def error(self, status: int = 503, code: str = "SlowDown", **match: object) -> Rule:
        return self.add(Rule("error", status=status, code=code, **match))  # type: ignore[arg-type]

    def delay(self, seconds: float, **match: object) -> Rule:
        return self.add(Rule("delay", delay_s=seconds, **match))  # type: ignore[arg-type]

    def reset(self, when: str = "before", **match: object) -> Rule:
        return self.add(Rule("reset", when=when, **match))  # type: ignore[arg-type]

    def down_on(self, seconds: float, **match: object) -> Rule:
        """Go down for ``seconds`` at the next matching request (once unless ``count`` says more)."""
        match.setdefault("count", 1)
        return self.add(Rule("down", delay_s=seconds, **match))  # type: ignore[arg-type]

    def deny_writes(self) -> Rule:
        """A read-only bucket: every PUT, POST and DELETE answers 403 AccessDenied."""
        return self.error(403, "AccessDenied", methods=WRITE_METHODS)

    def ignore_conditional_writes(self) -> None:
        """From now on (until :meth:`clear`), drop ``If-None-Match`` from every PUT and POST before
        forwarding it: a conditional create overwrites an existing key and answers 200, as on the
        servers that ignore the header. Counted as ``conditions_ignored``."""
        with self._lock:
            self._ignore_conditions = True

    def reseed(self, seed: int) -> None:
        """Restart the generator behind probability rules from ``seed``."""
        with self._lock:
            self._rng = random.Random(seed)

    def clear(self) -> None:
        """Remove every rule, and honour conditional writes again (the counts stay)."""
        with self._lock:
            self._rules.clear()
            self._ignore_conditions = False

    def go_down(self, seconds: float) -> threading.Thread:
        """Stop listening and drop every connection now; listen again on the same port after
        ``seconds`` (in the background: join the returned thread to wait for it) unless
        :meth:`restart` or another ``go_down`` comes first."""
        with self._lock:
            self.counts["down_windows"] += 1
            self._generation += 1
            generation = self._generation
        self._close_listener()
        self._drop_connections()

        def come_back() -> None:
            if not self._stopped.wait(seconds) and self._generation == generation:
                self._listen()

        thread = threading.Thread(target=come_back, name="fault-proxy-restart", daemon=True)
        thread.start()
        return thread

    def restart(self) -> None:
        """Listen again now: ends a down window early, or, when up, closes and reopens the
        listener on the same port at once, dropping every connection (counted as a restart)."""
        with self._lock:
            self._generation += 1
            if self.is_up:
                self.counts["restarts"] += 1
        if self.is_up:
            self._close_listener()
            self._drop_connections()
        self._listen()

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    def injected(self) -> int:
        """Faults injected so far: errors, delays, resets, down windows, restarts and conditions ignored."""
        with self._lock:
            return sum(v for k, v in self.counts.items() if k not in ("requests", "forwarded", "connections"))

    # ------------------------------------------------------------ listener
    def _listen(self) -> None:
        if self._listener is not None:  # already listening (overlapping down windows)
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5
        while True:
            try:
                sock.bind(("127.0.0.1", self._port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    sock.close()
                    raise
                time.sleep(0.05)
        sock.listen(64)
        sock.settimeout(0.05)
        self._port = sock.getsockname()[1]
        self._listener = sock
        self._up.set()
        self._accepting = threading.Thread(target=self._accept_loop, args=(sock,), name="fault-proxy-accept", daemon=True)
        self._accepting.start()

    def _close_listener(self) -> None:
        self._up.clear()
        sock, self._listener = self._listener, None
        if sock is not None:
            sock.close()
        if self._accepting is not None and self._accepting is not threading.current_thread():
            self._accepting.join(2)

    def _accept_loop(self, sock: socket.socket) -> None:
        while self._listener is sock:
            try:
                conn, _ = sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._lock:
                self._conns.add(conn)
                self.counts["connections"] += 1
            threading.Thread(target=self._serve, args=(conn,), name="fault-proxy-conn", daemon=True).start()

    def _drop_connections(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            _reset(conn, wake=True)

    # ---------------------------------------------------------- connection
    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while not self._stopped.is_set():
                request = _read_request(reader, conn)
                if request is None:
                    return
                if not self._handle(conn, request) or request.close:
                    return
        except (OSError, ValueError, http.client.HTTPException):
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                reader.close()
                conn.close()
            except OSError:
                pass

    def _pick(self, request: _Request) -> Rule | None:
        target = unquote(request.target)
        with self._lock:
            self.counts["requests"] += 1
            self.methods["LIST" if request.method == "GET" and "list-type=" in target else request.method] += 1
            for rule in self._rules:
                if rule.spent or not rule.matches(request.method, target, request.headers):
                    continue
                if rule.p is not None and self._rng.random() >= rule.p:
                    continue
                rule.fired += 1
                if rule.action == "error":
                    self.counts[f"error_{rule.status}_{rule.when}"] += 1
                elif rule.action == "reset":
                    self.counts[f"reset_{rule.when}"] += 1
                elif rule.action == "delay":
                    self.counts["delay"] += 1
                return rule  # "down" is counted by go_down
        return None

    def _handle(self, conn: socket.socket, request: _Request) -> bool:
        """Serve one request; False when the connection is gone (reset or dropped)."""
        rule = self._pick(request)
        if rule is not None and rule.action == "down":
            self.go_down(rule.delay_s)
            return False
        if rule is not None and rule.when == "before":
            if rule.action == "reset":
                _reset(conn)
                return False
            if rule.action == "error":
                conn.sendall(_error_response(rule.status, rule.code, request.method, self.counts["requests"], rule.header))
                return True
        if self._ignore_conditions and request.method in ("PUT", "POST"):
            kept = [(name, value) for name, value in request.headers if name.lower() != "if-none-match"]
            if len(kept) < len(request.headers):
                with self._lock:
                    self.counts["conditions_ignored"] += 1
                request.headers = kept
        status, reason, headers, body = self._forward(request)
        if rule is not None:
            if rule.action == "delay":
                time.sleep(rule.delay_s)
            elif rule.action == "error":
                conn.sendall(_error_response(rule.status, rule.code, request.method, self.counts["requests"], rule.header))
                return True
        response = _response_bytes(status, reason, headers, body, request.method)
        if rule is not None and rule.action == "reset":
            head_len = len(response) - len(body)
            cut = head_len + len(body) // 2 if body else max(1, head_len // 2)
            conn.sendall(response[:cut])
            _reset(conn)
            return False
        conn.sendall(response)
        return True

    def _forward(self, request: _Request) -> tuple[int, str, list[tuple[str, str]], bytes]:
        upstream = http.client.HTTPConnection(*self._upstream, timeout=120)
        try:
            upstream.putrequest(request.method, request.target, skip_host=True, skip_accept_encoding=True)
            has_length = False
            for name, value in request.headers:
                low = name.lower()
                if low in _HOP_BY_HOP:
                    continue
                has_length |= low == "content-length"
                upstream.putheader(name, value)
            if not has_length and (request.body or request.method in ("PUT", "POST")):
                upstream.putheader("Content-Length", str(len(request.body)))
            upstream.endheaders(request.body or None)
            response = upstream.getresponse()
            body = response.read()
            with self._lock:
                self.counts["forwarded"] += 1
            return response.status, response.reason, response.getheaders(), body
        finally:
            upstream.close()


# ------------------------------------------------------------------ HTTP
def _read_request(reader, conn: socket.socket) -> _Request | None:
    """One HTTP/1.1 request from a client connection, body de-chunked; None at end of stream."""
    line = reader.readline(65537)
    while line in (b"\r\n", b"\n"):  # tolerate stray blank lines between requests
        line = reader.readline(65537)
    if not line:
        return None
    method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        raw = reader.readline(65537)
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    lookup = {name.lower(): value for name, value in headers}
    if lookup.get("expect", "").lower() == "100-continue":
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in lookup.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size = int(reader.readline(65537).split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while reader.readline(65537) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                break
            chunks.append(reader.read(size))
            reader.readline(65537)
        body = b"".join(chunks)
    else:
        length = int(lookup.get("content-length", "0") or 0)
        body = reader.read(length) if length else b""
        if len(body) < length:
            return None
    close = lookup.get("connection", "").lower() == "close" or version == "HTTP/1.0"
    return _Request(method.upper(), target, headers, body, close)


def _response_bytes(status: int, reason: str, headers: list[tuple[str, str]], body: bytes, method: str) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason or _REASONS.get(status, '')}"]
    keep_length = method == "HEAD" or status in (204, 304) or 100 <= status < 200
    for name, value in headers:
        low = name.lower()
        if low in _HOP_BY_HOP or (low == "content-length" and not keep_length):
            continue
        lines.append(f"{name}: {value}")
    if not keep_length:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (b"" if method == "HEAD" else body)


def _error_response(status: int, code: str, method: str, request_number: int, header: str | None = None) -> bytes:
    """An S3 error reply: ``status``, an XML error document with ``code``, its message and, where
    given, the request ``header`` it is about (``<Header>``, as AWS's ``NotImplemented``)."""
    request_id = f"FAULT{request_number:012d}"
    about = f"<Header>{header}</Header>" if header else ""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{_MESSAGES.get(code, code)}</Message>{about}"
        f"<RequestId>{request_id}</RequestId><HostId>fault-proxy</HostId></Error>"
    ).encode()
    headers = [("Content-Type", "application/xml"), ("x-amz-request-id", request_id)]
    if method == "HEAD":
        headers.append(("Content-Length", str(len(body))))
    return _response_bytes(status, _REASONS.get(status, "Error"), headers, body, method)


def _reset(conn: socket.socket, wake: bool = False) -> None:
    """Close with a TCP RST (linger 0): the peer sees "connection reset by peer". ``wake``: also
    shut the socket down, so that a thread blocked reading it returns (the socket is really
    closed once that thread drops its reader)."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if wake:
            conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass
