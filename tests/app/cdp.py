"""A small Chrome DevTools Protocol client for tests: open a local HTML file in headless
Chromium, collect console errors and network requests, evaluate JavaScript, press keys, take
screenshots. Standard library only (a minimal websocket client is included).

Usage (skip the test when no browser is installed):

    import cdp
    if cdp.find_chromium() is None:
        pytest.skip("no chromium or chromium-browser on PATH")
    with cdp.open_page(tmp_path / "page.html") as page:
        assert page.console_errors == []      # console.error(), uncaught exceptions, log errors
        assert page.requests == []            # any request that is not file:, data: or about:
        n = page.evaluate("document.querySelectorAll('svg .gate').length")
        page.evaluate("document.getElementById('next').click()")
        page.press("ArrowRight")              # a real key event (Input.dispatchKeyEvent)
        page.screenshot("docs/trace.png")     # PNG of the page's full content (or clip=...)

Several pages in one browser (one launch, about a second):

    with cdp.Browser() as browser:
        with browser.page("a.html") as a: ...
        with browser.page("b.html") as b: ...

`page.evaluate(expr)` returns the value (JSON-able results; promises are awaited) and raises
CDPError when the expression throws. `page.send(method, **params)` sends any CDP command.
Import it from a test with `sys.path.insert(0, str(Path(__file__).parent))` (tests/app).
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:", "chrome-error:", "devtools:")


class CDPError(RuntimeError):
    """A CDP command failed, or the evaluated JavaScript threw."""


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH (chromium, chromium-browser, ...), or None."""
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


# ---- a minimal websocket client (RFC 6455: text frames, client masking, ping/pong) -------------

class WebSocket:
    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, url: str, timeout: float = 20.0):
        u = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        path = u.path + (f"?{u.query}" if u.query else "")
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise CDPError("the browser closed the websocket during the handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise CDPError(f"websocket handshake refused: {lines[0]}")
        accept = base64.b64encode(hashlib.sha1((key + self.GUID).encode()).digest()).decode()
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (ln.partition(":") for ln in lines[1:])}
        if headers.get("sec-websocket-accept") != accept:
            raise CDPError("websocket handshake: bad Sec-WebSocket-Accept")

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise CDPError("the browser closed the websocket")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode("utf-8"))

    def recv(self) -> str:
        """The next whole text message (fragments joined; pings answered)."""
        parts: list[bytes] = []
        while True:
            b0, b1 = self._read(2)
            fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack(">H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack(">Q", self._read(8))
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                raise CDPError("the browser closed the websocket")
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            parts.append(payload)
            if fin:
                return b"".join(parts).decode("utf-8")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send_frame(0x8, b"")
        with contextlib.suppress(OSError):
            self.sock.close()


# ---- the browser and its pages ------------------------------------------------------------------

class Page:
    """One page target: send commands, collect console errors and requests."""

    def __init__(self, ws_url: str, timeout: float = 20.0):
        self.ws = WebSocket(ws_url, timeout)
        self.timeout = timeout
        self._id = 0
        self.console_errors: list[str] = []
        self.console: list[str] = []       # every console message, "type: text"
        self.requests: list[str] = []      # network requests that are not local
        self.events: list[dict[str, Any]] = []

    def _event(self, msg: dict[str, Any]) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        self.events.append(msg)
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", "")))
                            for a in params.get("args", []))
            self.console.append(f"{params.get('type')}: {text}")
            if params.get("type") in ("error", "assert"):
                self.console_errors.append(f"console.{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            what = d.get("exception", {}).get("description") or d.get("text", "")
            self.console_errors.append(f"uncaught: {what} (line {d.get('lineNumber')})")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                self.console_errors.append(f"log ({entry.get('source')}): "
                                           f"{entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if not url.startswith(LOCAL_SCHEMES):
                self.requests.append(url)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a CDP command and return its result; events that arrive meanwhile are kept."""
        self._id += 1
        mid = self._id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})
            if "method" in msg:
                self._event(msg)
        raise CDPError(f"{method}: no answer in {self.timeout} s")

    def wait_for(self, method: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the next event `method` (e.g. Page.loadEventFired) and return its params."""
        seen = next((m for m in self.events if m.get("method") == method
                     and not m.get("_used")), None)
        if seen is not None:
            seen["_used"] = True
            return seen.get("params", {})
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self._event(msg)
                if msg["method"] == method:
                    msg["_used"] = True
                    return msg.get("params", {})
        raise CDPError(f"no {method} in {timeout or self.timeout} s")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (CDPError if it throws)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True, userGesture=True)
        if "exceptionDetails" in result:
            d = result["exceptionDetails"]
            raise CDPError(d.get("exception", {}).get("description") or d.get("text"))
        return result.get("result", {}).get("value")

    def press(self, key: str) -> None:
        """A real key press on the page (ArrowLeft, ArrowRight, Enter, ...)."""
        codes = {"ArrowLeft": 37, "ArrowUp": 38, "ArrowRight": 39, "ArrowDown": 40,
                 "Enter": 13, "Escape": 27, "Tab": 9, " ": 32}
        code = codes.get(key, ord(key.upper()[0]) if len(key) == 1 else 0)
        for kind in ("rawKeyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key=key, code=key,
                      windowsVirtualKeyCode=code, nativeVirtualKeyCode=code)

    def screenshot(self, path: str | Path | None = None, clip: dict[str, float] | None = None,
                   full_page: bool = True) -> bytes:
        """A PNG of the page (its whole content unless `clip` = {x, y, width, height})."""
        params: dict[str, Any] = {"format": "png"}
        if clip is None and full_page:
            size = self.evaluate("[Math.ceil(document.documentElement.scrollWidth), "
                                 "Math.ceil(document.documentElement.scrollHeight)]")
            clip = {"x": 0, "y": 0, "width": size[0], "height": size[1]}
        if clip is not None:
            params["clip"] = {"scale": 1, **clip}
            params["captureBeyondViewport"] = True
        data = base64.b64decode(self.send("Page.captureScreenshot", **params)["data"])
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(data)
        return data

    def close(self) -> None:
        self.ws.close()


class Browser:
    """Headless Chromium with remote debugging on a free port, in a throwaway profile."""

    def __init__(self, binary: str | None = None, width: int = 1280, height: int = 900,
                 timeout: float = 20.0):
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise CDPError("no chromium or chromium-browser on PATH")
        self.width, self.height, self.timeout = width, height, timeout
        self.profile = tempfile.mkdtemp(prefix="cdp-profile-")
        self.log = open(os.path.join(self.profile, "stderr.log"), "wb")
        self.proc = subprocess.Popen(
            [self.binary, "--headless=new", "--disable-gpu", "--no-sandbox",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-sync",
             "--disable-background-networking", "--disable-component-update",
             "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
             "--disable-dev-shm-usage", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self.log, stdin=subprocess.DEVNULL,
            start_new_session=True)
        try:
            self.port = self._port()
            self.version = self._http("GET", "/json/version")
        except BaseException:
            self.close()
            raise

    def _port(self) -> int:
        active = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CDPError(f"{self.binary} exited with {self.proc.returncode}: "
                               + Path(self.log.name).read_text(errors="replace")[-2000:])
            if active.exists():
                first = active.read_text().split("\n")[0].strip()
                if first.isdigit():
                    return int(first)
            time.sleep(0.05)
        raise CDPError(f"{self.binary} did not open its debugging port in {self.timeout} s")

    def _http(self, method: str, path: str) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            body = response.read().decode()
            if response.status != 200:
                raise CDPError(f"{method} {path}: HTTP {response.status} {body[:200]}")
            return json.loads(body)
        finally:
            conn.close()

    @contextlib.contextmanager
    def page(self, path: str | Path, wait: float = 0.0) -> Iterator[Page]:
        """A new tab that loads `path` (a local file) with Runtime, Log and Network watched
        from before the first byte; closed afterwards."""
        target = self._http("PUT", "/json/new?about:blank")
        page = Page(target["webSocketDebuggerUrl"], self.timeout)
        try:
            for domain in ("Runtime", "Log", "Network", "Page"):
                page.send(f"{domain}.enable")
            page.send("Emulation.setDeviceMetricsOverride", width=self.width,
                      height=self.height, deviceScaleFactor=1, mobile=False)
            url = Path(path).resolve().as_uri() if "://" not in str(path) else str(path)
            page.send("Page.navigate", url=url)
            page.wait_for("Page.loadEventFired")
            if wait:
                time.sleep(wait)
            page.evaluate("new Promise(r => requestAnimationFrame(() => r(true)))")
            yield page
        finally:
            page.close()
            with contextlib.suppress(Exception):
                self._http("GET", f"/json/close/{target['id']}")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # the group this Popen started
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def open_page(path: str | Path, width: int = 1280, height: int = 900,
              timeout: float = 20.0) -> Iterator[Page]:
    """Launch a headless browser, open `path`, yield the Page; close everything afterwards.
    `page.console_errors` and `page.evaluate` are what most tests need."""
    with Browser(width=width, height=height, timeout=timeout) as browser:
        with browser.page(path) as page:
            yield page
