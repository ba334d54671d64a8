"""The SockJS protocol, transport by transport, over real sockets.

Every test runs twice: against ``snorky sockjs-echo`` (Snorky's implementation, started exactly as
users start it) and against the npm ``sockjs`` server (``tests/sockjs/reference_server.mjs``), the
SockJS project's own. A test that passes on both encodes the protocol, not one reading of it.
Both serve ``/echo`` (streaming responses end after 4,096 bytes), ``/close`` (3000 "Go away!" at
once), ``/disabled_websocket_echo`` and ``/cookie_needed_echo``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "tests" / "sockjs" / "reference_server.mjs"
TIMEOUT = 5.0
NOT_CACHED = "no-store, no-cache, no-transform, must-revalidate, max-age=0"
LIMIT = 4096


def drain_output(stream: IO[str], pattern: str, found: list[int]) -> None:
    """Read a server's output to its end, noting the port the first line matching `pattern` names.

    Draining it all keeps the server from ever blocking on a full pipe.
    """
    for line in stream:
        if not found and (match := re.search(pattern, line)):
            found.append(int(match.group(1)))


def reported_port(process: subprocess.Popen[str], found: list[int]) -> int:
    """The port a server bound to port 0 reports.

    Asking the OS for a free port and passing it on is racy when tests run in parallel: another
    worker's server can take the port first, and a probe then finds the wrong server listening.
    """
    deadline = time.monotonic() + 20
    while not found and time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited with {process.returncode}"
        time.sleep(0.05)
    assert found, "the server did not report the port it listens on"
    return found[0]


@pytest.fixture(scope="module", params=["snorky", "reference"])
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    """The base URL of a running protocol test application."""
    if request.param == "snorky":
        command = [sys.executable, "-m", "snorky", "sockjs-echo", "--address", "127.0.0.1:0"]
        pattern = r"listening on http://127\.0\.0\.1:(\d+)"
    else:
        node = shutil.which("node")
        assert node, "node is needed for the reference SockJS server"
        assert (REPO / "tests" / "sockjs" / "node_modules" / "sockjs").is_dir(), (
            "run `npm ci` in tests/sockjs (scripts/setup does) for the reference SockJS server"
        )
        command = [node, str(REFERENCE), "--port", "0"]
        pattern = r"listening on (\d+)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNORKY_")}
    # The Snorky server logs to stderr, the reference server prints to stdout: read both as one.
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    found: list[int] = []
    reader = threading.Thread(target=drain_output, args=(process.stdout, pattern, found), daemon=True)
    reader.start()
    try:
        yield f"127.0.0.1:{reported_port(process, found)}"
    finally:
        # The reader thread owns the output pipe, so wait rather than communicate.
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        reader.join(timeout=10)
        process.stdout.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def request(
    host: str, method: str, path: str, body: str | bytes | None = None, headers: dict[str, str] | None = None
) -> Reply:
    conn = http.client.HTTPConnection(host, timeout=TIMEOUT)
    try:
        data = body.encode() if isinstance(body, str) else body
        all_headers = dict(headers or {})
        if method == "POST" and data is None:
            all_headers["Content-Length"] = "0"
        conn.request(method, path, body=data, headers=all_headers)
        response = conn.getresponse()
        raw = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, raw.decode())
    finally:
        conn.close()


OPEN_STREAMS: list[Stream] = []


@pytest.fixture(autouse=True)
def close_streams() -> Iterator[None]:
    yield
    while OPEN_STREAMS:
        OPEN_STREAMS.pop().close()


class Stream:
    """A streaming response read piece by piece, whatever its chunking (closed after the test)."""

    def __init__(
        self, host: str, method: str, path: str, headers: dict[str, str] | None = None, version: str = "1.1"
    ) -> None:
        name, port = host.split(":")
        self.sock = socket.create_connection((name, int(port)))
        OPEN_STREAMS.append(self)
        self.sock.settimeout(TIMEOUT)
        lines = [f"{method} {path} HTTP/{version}", f"Host: {host}", "Content-Length: 0"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        head = self._until(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.version, self.status = status_line.split(" ")[0], int(status_line.split(" ")[1])
        self.headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        self.body = b""
        self.ended = False

    def _recv(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            assert self._recv(), f"connection closed before {marker!r}"
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _fill(self) -> bool:
        """Moves more body bytes into ``self.body``; False at the body's end."""
        if self.ended:
            return False
        if not self.chunked:
            if not self.buffer and not self._recv():
                self.ended = True
                return False
            self.body += self.buffer
            self.buffer = b""
            return True
        size = int(self._until(b"\r\n"), 16)
        while len(self.buffer) < size + 2:
            assert self._recv(), "connection closed inside a chunk"
        self.body += self.buffer[:size]
        self.buffer = self.buffer[size + 2 :]
        if size == 0:
            self.ended = True
            return False
        return True

    def read(self, expected: str) -> str:
        """Reads ``len(expected)`` bytes and returns them (for an equality assertion)."""
        want = len(expected.encode())
        while len(self.body) < want and self._fill():
            pass
        got, self.body = self.body[:want], self.body[want:]
        return got.decode()

    def read_until(self, marker: str) -> str:
        """Reads up to and including ``marker``."""
        want = marker.encode()
        while want not in self.body:
            assert self._fill(), f"the response ended before {marker!r}"
        head, _, self.body = self.body.partition(want)
        return (head + want).decode()

    def at_end(self) -> bool:
        """Whether the response ends here, with nothing more."""
        while self._fill():
            pass
        return not self.body

    def close(self) -> None:
        self.sock.close()


def session(base: str = "/echo") -> str:
    return f"{base}/000/{uuid.uuid4()}"


def ws(server: str, path: str) -> ClientConnection:
    return connect(f"ws://{server}{path}", open_timeout=TIMEOUT, close_timeout=TIMEOUT)


# Static paths ------------------------------------------------------------------------------------


def test_greeting_and_not_found(server: str) -> None:
    for path in ["/echo", "/echo/"]:
        reply = request(server, "GET", path)
        assert reply.status == 200
        assert reply.body == "Welcome to SockJS!\n"
        assert reply.header("content-type").replace(" ", "") == "text/plain;charset=UTF-8"
    for path in ["/echo/a", "/echo/a.html", "/echo//", "/echo/a/a", "/echo/a/a/", "/echo/iframe.HTML"]:
        assert request(server, "GET", path).status == 404, path


def test_info_reports_capabilities_and_fresh_entropy(server: str) -> None:
    reply = request(server, "GET", "/echo/info", headers={"Origin": "http://app.test"})
    assert reply.status == 200
    assert reply.header("content-type").replace(" ", "") == "application/json;charset=UTF-8"
    assert reply.header("cache-control") == NOT_CACHED
    assert reply.header("access-control-allow-origin") == "http://app.test"
    assert reply.header("access-control-allow-credentials") == "true"
    assert reply.header("set-cookie") is None
    info = json.loads(reply.body)
    assert info["websocket"] is True
    assert info["cookie_needed"] is False
    assert info["origins"] == ["*:*"]
    entropies = {json.loads(request(server, "GET", "/echo/info").body)["entropy"] for _ in range(3)}
    assert len(entropies) == 3 and all(0 <= e < 2**32 for e in entropies)
    assert json.loads(request(server, "GET", "/disabled_websocket_echo/info").body)["websocket"] is False
    assert json.loads(request(server, "GET", "/cookie_needed_echo/info").body)["cookie_needed"] is True


def test_iframe_page_is_cacheable_and_answers_304(server: str) -> None:
    first = request(server, "GET", "/echo/iframe.html")
    assert first.status == 200
    assert "SockJS.bootstrap_iframe();" in first.body
    assert '<script src="http' in first.body
    assert "max-age=31536000" in first.header("cache-control")
    assert first.header("expires") and first.header("etag") and not first.header("last-modified")
    versioned = request(server, "GET", "/echo/iframe-1.6.1.html?t=123")
    assert versioned.status == 200 and versioned.header("etag") == first.header("etag")
    cached = request(server, "GET", "/echo/iframe.html", headers={"If-None-Match": first.header("etag")})
    assert cached.status == 304
    assert cached.body == "" and cached.header("content-type") is None


def test_preflight_is_cacheable_and_echoes_requested_headers(server: str) -> None:
    for suffix in ["xhr", "xhr_send", "xhr_streaming"]:
        reply = request(
            server,
            "OPTIONS",
            f"/echo/abc/abc/{suffix}",
            headers={
                "Origin": "http://app.test",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-a, x-b",
            },
        )
        assert reply.status in (200, 204)
        assert reply.body == ""
        assert "POST" in reply.header("access-control-allow-methods")
        assert int(reply.header("access-control-max-age")) >= 31536000
        assert reply.header("access-control-allow-origin") == "http://app.test"
        assert reply.header("access-control-allow-headers") == "x-a, x-b"


def test_wrong_methods_get_405_with_allow_and_no_body(server: str) -> None:
    for method, path in [("POST", "/echo/0/0/websocket"), ("GET", "/echo/0/0/xhr"), ("GET", "/echo/0/0/xhr_send")]:
        reply = request(server, method, path)
        assert reply.status == 405, path
        assert reply.header("allow")
        assert reply.body == "" and reply.header("content-type") is None


# Sessions over xhr polling -------------------------------------------------------------------------


def test_xhr_polling_session(server: str) -> None:
    url = session()
    opened = request(server, "POST", f"{url}/xhr", headers={"Origin": "http://app.test"})
    assert (opened.status, opened.body) == (200, "o\n")
    assert opened.header("content-type").replace(" ", "") == "application/javascript;charset=UTF-8"
    assert opened.header("cache-control") == NOT_CACHED
    assert opened.header("access-control-allow-origin") == "http://app.test"
    sent = request(server, "POST", f"{url}/xhr_send", '["a", "b"]')
    assert (sent.status, sent.body) == (204, "")
    assert sent.header("content-type").replace(" ", "") == "text/plain;charset=UTF-8"
    request(server, "POST", f"{url}/xhr_send", "[]")
    request(server, "POST", f"{url}/xhr_send", '["c"]', headers={"Content-Type": "application/xml"})
    assert request(server, "POST", f"{url}/xhr").body == 'a["a","b","c"]\n'


def test_the_server_id_is_ignored_and_ids_are_validated(server: str) -> None:
    sid = str(uuid.uuid4())
    assert request(server, "POST", f"/echo/000/{sid}/xhr").body == "o\n"
    request(server, "POST", f"/echo/111/{sid}/xhr_send", '["x"]')
    assert request(server, "POST", f"/echo/999/{sid}/xhr").body == 'a["x"]\n'
    for bad in ["//", "/a./a", "/a/a.", "/./.", "/", "///"]:
        assert request(server, "POST", f"/echo{bad}/xhr").status == 404, bad


def test_sending_to_an_unknown_session_is_404(server: str) -> None:
    assert request(server, "POST", f"{session()}/xhr_send", '["x"]').status == 404
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert request(server, "POST", f"{session()}/jsonp_send", "d=%5B%22x%22%5D", headers=form).status == 404


def test_broken_or_missing_payloads_are_refused_and_the_session_lives_on(server: str) -> None:
    url = session()
    request(server, "POST", f"{url}/xhr")
    broken = request(server, "POST", f"{url}/xhr_send", '["x')
    assert broken.status == 500 and "Broken JSON encoding." in broken.body
    empty = request(server, "POST", f"{url}/xhr_send", "")
    assert empty.status == 500 and "Payload expected." in empty.body
    assert request(server, "POST", f"{url}/xhr_send", '["ok"]').status == 204
    assert request(server, "POST", f"{url}/xhr").body == 'a["ok"]\n'


def test_a_second_receiver_gets_2010_and_the_first_keeps_the_session(server: str) -> None:
    url = session()
    request(server, "POST", f"{url}/xhr")
    first = Stream(server, "POST", f"{url}/xhr_streaming")
    first.read("h" * 2048 + "\n")
    second = request(server, "POST", f"{url}/xhr")
    assert second.body == 'c[2010,"Another connection still open"]\n'
    streaming = Stream(server, "POST", f"{url}/xhr_streaming")
    assert streaming.read("h" * 2048 + "\n") == "h" * 2048 + "\n"
    assert streaming.read('c[2010,"Another connection still open"]\n') == 'c[2010,"Another connection still open"]\n'
    assert streaming.at_end()
    request(server, "POST", f"{url}/xhr_send", '["still here"]')
    assert first.read('a["still here"]\n') == 'a["still here"]\n'
    first.close()
    streaming.close()


def test_an_aborted_poll_is_noticed_at_once(server: str) -> None:
    url = session()
    request(server, "POST", f"{url}/xhr")
    name, port = server.split(":")
    pending = socket.create_connection((name, int(port)))
    pending.settimeout(TIMEOUT)
    pending.sendall(f"POST {url}/xhr HTTP/1.1\r\nHost: {server}\r\nContent-Length: 0\r\n\r\n".encode())
    time.sleep(0.25)
    assert request(server, "POST", f"{url}/xhr").body == 'c[2010,"Another connection still open"]\n'
    pending.close()
    # The next poll finds the session closed by the abort (or, allowed too, a new one).
    assert request(server, "POST", f"{url}/xhr").body in ('c[1002,"Connection interrupted"]\n', "o\n")


def test_the_close_service_serves_its_close_frame_until_the_session_expires(server: str) -> None:
    url = session("/close")
    assert request(server, "POST", f"{url}/xhr").body == "o\n"
    for _ in range(2):
        assert request(server, "POST", f"{url}/xhr").body == 'c[3000,"Go away!"]\n'


# Streaming transports ------------------------------------------------------------------------------


def test_xhr_streaming_prelude_frames_and_response_limit(server: str) -> None:
    url = session()
    stream = Stream(server, "POST", f"{url}/xhr_streaming", headers={"Origin": "http://app.test"})
    assert stream.status == 200
    assert stream.headers["cache-control"] == NOT_CACHED
    assert stream.headers["access-control-allow-origin"] == "http://app.test"
    assert stream.read("h" * 2048 + "\n") == "h" * 2048 + "\n"
    assert stream.read("o\n") == "o\n"
    message = "x" * 128
    frame = f'a["{message}"]\n'
    sent = 2
    while sent < LIMIT:
        request(server, "POST", f"{url}/xhr_send", json.dumps([message]))
        assert stream.read(frame) == frame
        sent += len(frame)
    # Past the limit the response ends; the session goes on with the next request.
    assert stream.at_end()
    request(server, "POST", f"{url}/xhr_send", '["next"]')
    assert request(server, "POST", f"{url}/xhr").body == 'a["next"]\n'


def test_eventsource_framing(server: str) -> None:
    url = session()
    stream = Stream(server, "GET", f"{url}/eventsource")
    assert stream.headers["content-type"] == "text/event-stream"
    assert stream.headers["cache-control"] == NOT_CACHED
    assert stream.read("\r\n") == "\r\n"
    assert stream.read("data: o\r\n\r\n") == "data: o\r\n\r\n"
    request(server, "POST", f"{url}/xhr_send", r'["  \u0000\n\r "]')
    expected = 'data: a["  \\u0000\\n\\r "]\r\n\r\n'
    assert stream.read(expected) == expected
    stream.close()


def test_htmlfile_framing_and_callback_checks(server: str) -> None:
    url = session()
    stream = Stream(server, "GET", f"{url}/htmlfile?c=%63allback")
    assert stream.headers["content-type"].replace(" ", "") == "text/html;charset=UTF-8"
    opened = '<script>\np("o");\n</script>\r\n'
    page = stream.read_until(opened)
    head = page[: -len(opened)]
    assert "var c = parent.callback;" in head and "function p(d) {c.message(d);};" in head
    assert len(head) > 1024, "the head is padded so that browsers run it at once"
    request(server, "POST", f"{url}/xhr_send", '["x"]')
    message = '<script>\np("a[\\"x\\"]");\n</script>\r\n'
    assert stream.read(message) == message
    stream.close()
    missing = request(server, "GET", f"{session()}/htmlfile")
    assert missing.status == 500 and '"callback" parameter required' in missing.body
    for bad in ["%20", "*", "abc(", "abc%28"]:
        reply = request(server, "GET", f"{session()}/htmlfile?c={bad}")
        assert reply.status == 500 and 'invalid "callback" parameter' in reply.body, bad


# JSONP ---------------------------------------------------------------------------------------------


def test_jsonp_polling_and_sending(server: str) -> None:
    url = session()
    opened = request(server, "GET", f"{url}/jsonp?c=%63allback")
    assert opened.body == '/**/callback("o");\r\n'
    assert opened.header("cache-control") == NOT_CACHED
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    sent = request(server, "POST", f"{url}/jsonp_send", "d=%5B%22x%22%5D", headers=form)
    assert (sent.status, sent.body) == (200, "ok")
    raw = request(server, "POST", f"{url}/jsonp_send", '["%61bc"]', headers={"Content-Type": "text/plain"})
    assert raw.body == "ok"
    assert request(server, "GET", f"{url}/jsonp?c=cb").body == '/**/cb("a[\\"x\\",\\"%61bc\\"]");\r\n'
    for body in ["", "d=", "p=p"]:
        reply = request(server, "POST", f"{url}/jsonp_send", body, headers=form)
        assert reply.status == 500 and "Payload expected." in reply.body, body
    broken = request(server, "POST", f"{url}/jsonp_send", "d=%5B%22x", headers=form)
    assert broken.status == 500 and "Broken JSON encoding." in broken.body
    assert request(server, "GET", f"{session()}/jsonp").status == 500


def test_jsonp_close_frame(server: str) -> None:
    url = session("/close")
    assert request(server, "GET", f"{url}/jsonp?c=x").body == '/**/x("o");\r\n'
    assert request(server, "GET", f"{url}/jsonp?c=x").body == '/**/x("c[3000,\\"Go away!\\"]");\r\n'


def test_jsessionid_cookie_when_needed(server: str) -> None:
    url = session("/cookie_needed_echo")
    opened = request(server, "POST", f"{url}/xhr")
    assert opened.header("set-cookie").split(";")[0] == "JSESSIONID=dummy"
    assert opened.header("set-cookie").split(";")[1].strip().lower() == "path=/"
    echoed = request(server, "POST", f"{session('/cookie_needed_echo')}/xhr", headers={"Cookie": "JSESSIONID=abc"})
    assert echoed.header("set-cookie").split(";")[0] == "JSESSIONID=abc"
    assert request(server, "POST", f"{session()}/xhr").header("set-cookie") is None


# WebSocket -----------------------------------------------------------------------------------------


def test_websocket_transport(server: str) -> None:
    with ws(server, f"{session()}/websocket") as socket_:
        assert socket_.recv(timeout=TIMEOUT) == "o"
        socket_.send("")
        socket_.send("[]")
        socket_.send('["a","b"]')
        received: list[str] = []
        while len(received) < 2:
            frame = socket_.recv(timeout=TIMEOUT)
            assert frame.startswith("a[")
            received += json.loads(frame[1:])
        assert received == ["a", "b"]


def test_websocket_sessions_may_share_an_id(server: str) -> None:
    path = f"{session()}/websocket"
    with ws(server, path) as one, ws(server, path) as two:
        assert one.recv(timeout=TIMEOUT) == "o" and two.recv(timeout=TIMEOUT) == "o"
        two.send('["two"]')
        one.send('["one"]')
        assert one.recv(timeout=TIMEOUT) == 'a["one"]'
        assert two.recv(timeout=TIMEOUT) == 'a["two"]'


def test_websocket_close_service(server: str) -> None:
    with ws(server, f"{session('/close')}/websocket") as socket_:
        assert socket_.recv(timeout=TIMEOUT) == "o"
        assert socket_.recv(timeout=TIMEOUT) == 'c[3000,"Go away!"]'
        with pytest.raises(ConnectionClosed):
            socket_.recv(timeout=TIMEOUT)


def test_websocket_broken_json_ends_the_connection(server: str) -> None:
    with ws(server, f"{session()}/websocket") as socket_:
        assert socket_.recv(timeout=TIMEOUT) == "o"
        socket_.send('["a')
        with pytest.raises(ConnectionClosed):
            socket_.recv(timeout=TIMEOUT)


def test_websocket_needs_an_upgrade(server: str) -> None:
    assert request(server, "GET", "/echo/0/0/websocket").status == 400
    assert request(server, "GET", "/disabled_websocket_echo/0/0/websocket").status == 404


def test_raw_websocket(server: str) -> None:
    with ws(server, "/echo/websocket") as socket_:
        socket_.send("Hello world!\uffff")
        assert socket_.recv(timeout=TIMEOUT) == "Hello world!\uffff"
    with ws(server, "/close/websocket") as socket_, pytest.raises(ConnectionClosed) as closed:
        socket_.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.reason == "Go away!"


# Encoding and HTTP versions --------------------------------------------------------------------------


def test_characters_browsers_mangle_are_escaped(server: str) -> None:
    url = session()
    request(server, "POST", f"{url}/xhr")
    mangled = "\u200c\u2028\u2029\u2060\ufff0\uffff"
    request(server, "POST", f"{url}/xhr_send", '["' + mangled + 'ok"]')
    body = request(server, "POST", f"{url}/xhr").body
    assert body == 'a["\\u200c\\u2028\\u2029\\u2060\\ufff0\\uffffok"]\n'
    assert json.loads(body[1:])[0] == mangled + "ok"


def test_http_1_0_streaming_is_close_delimited(server: str) -> None:
    url = session("/close")
    stream = Stream(server, "POST", f"{url}/xhr_streaming", headers={"Connection": "Keep-Alive"}, version="1.0")
    assert stream.status == 200
    assert "transfer-encoding" not in stream.headers and "content-length" not in stream.headers
    assert stream.read("h" * 2048 + "\n").startswith("h")
    assert stream.read("o\n") == "o\n"
    assert stream.read('c[3000,"Go away!"]\n') == 'c[3000,"Go away!"]\n'
    assert stream.at_end()
    stream.close()
