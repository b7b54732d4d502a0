"""Drive headless Chromium through the DevTools protocol over a pipe (``--remote-debugging-pipe``):
no websocket library and no download, only the browser Debian packages. Enough for the report's
tests: open a page, evaluate JavaScript, click at a point, and collect console errors."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time


def chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


class Browser:
    """One headless browser with one page. Messages are JSON, each ended by a NUL byte, on the
    browser's file descriptors 3 (commands in) and 4 (replies and events out)."""

    def __init__(self, width: int = 1200, height: int = 900) -> None:
        commands_r, self._commands = os.pipe()
        self._replies, replies_w = os.pipe()
        self.profile = tempfile.mkdtemp(prefix="locodiff-chromium-")

        def wire() -> None:  # in the child, before exec: the protocol's descriptors 3 and 4
            os.dup2(commands_r, 100)  # out of the way first: either pipe end may be 3 or 4 already
            os.dup2(replies_w, 101)
            os.dup2(100, 3)  # dup2 makes the copies inheritable (pipes are close-on-exec)
            os.dup2(101, 4)

        args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"]
        self.proc = subprocess.Popen(args, preexec_fn=wire, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(commands_r)
        os.close(replies_w)
        self._buffer, self._next_id, self.events, self.session = b"", 0, [], None
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable")

    def send(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(method)

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise RuntimeError("the browser closed its pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url: str, ready: str, timeout: float = 60) -> None:
        """Load ``url`` and wait until the JavaScript expression ``ready`` is true."""
        self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while not self.evaluate(ready):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: {ready} never became true")
            time.sleep(0.1)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def centre(self, selector: str) -> tuple[float, float]:
        """Scroll the first element ``selector`` matches into view; its centre in the viewport."""
        return tuple(self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                                   "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
                                   "return [r.left + r.width / 2, r.top + r.height / 2]; })()"))

    def hover(self, selector: str) -> None:
        x, y = self.centre(selector)
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})

    def click(self, selector: str) -> None:
        """A real mouse click (moved, pressed, released) at the centre of the first match of ``selector``."""
        x, y = self.centre(selector)
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def screenshot(self, path, selector: str = "body") -> bytes:
        """A PNG of the first element ``selector`` matches, the whole of it, written to ``path``."""
        box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect(); "
                            "return [r.left + scrollX, r.top + scrollY, r.width, r.height]; })()")
        clip = dict(zip(("x", "y", "width", "height"), box), scale=1)
        data = self.send("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True})
        png = base64.b64decode(data["data"])
        with open(path, "wb") as f:
            f.write(png)
        return png

    def errors(self) -> list[str]:
        """Console errors and uncaught exceptions seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(str(params.get("exceptionDetails")))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(str(params.get("args")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(str(params["entry"].get("text")))
        return found

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self._commands)
        os.close(self._replies)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
