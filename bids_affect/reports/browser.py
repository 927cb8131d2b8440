"""Open a report in a real headless Chromium and say what went wrong there.

The browser is driven over the Chrome DevTools Protocol through
``--remote-debugging-pipe`` (file descriptors 3 and 4, one JSON message per
NUL-terminated record), so no websocket package and no free port are needed.
The check loads the page from disk, waits for its load event, decodes every
``<img>``, collects console errors, uncaught exceptions and failed loads,
and can save a full-page PNG screenshot (a CI artifact).

Examples
--------
>>> chromium = find_chromium()
>>> chromium is None or chromium.is_file()
True
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_affect.exceptions import InputMissingError

#: Executable names of Chromium, in the order they are looked for on ``PATH``.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: Console message types and log levels that count as errors.
ERROR_TYPES = ("error", "assert")

#: Resolves to the ``src`` of every image that fails to decode (missing file,
#: not an image, zero size); ``decode()`` waits for images still loading.
_BROKEN_IMAGES_JS = """
Promise.all(Array.from(document.images).map(img => img.decode().then(
    () => img.naturalWidth > 0 ? null : img.getAttribute('src'),
    () => img.getAttribute('src')))).then(found => found.filter(src => src !== null))
"""


@dataclass(frozen=True)
class BrowserCheck:
    """What Chromium saw when it opened a page.

    Attributes
    ----------
    url : str
        The page opened.
    errors : list of str
        Console errors, uncaught exceptions and failed resource loads, in order.
    broken_images : list of str
        ``src`` of the ``<img>`` elements that did not decode.
    n_images : int
        Number of ``<img>`` elements on the page.
    screenshot : Path or None
        The PNG written, when one was asked for.
    """

    url: str
    errors: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    n_images: int = 0
    screenshot: Path | None = None

    @property
    def ok(self) -> bool:
        """True when the page loaded with no error and no broken image."""
        return not self.errors and not self.broken_images


def find_chromium() -> Path | None:
    """The Chromium executable on ``PATH`` (``BIDS_AFFECT_CHROMIUM`` first), or None.

    Examples
    --------
    >>> found = find_chromium()
    >>> found is None or os.access(found, os.X_OK)
    True
    """
    candidates = [os.environ.get("BIDS_AFFECT_CHROMIUM", ""), *CHROMIUM_NAMES]
    for name in candidates:
        found = shutil.which(name) if name else None
        if found:
            return Path(found)
    return None


class _DevToolsPipe:
    """A Chromium process and its DevTools pipe (write to fd 3, read from fd 4)."""

    def __init__(self, chromium: Path, profile: Path):
        to_browser_read, self._write_fd = os.pipe()
        self._read_fd, from_browser_write = os.pipe()

        def wire_pipes() -> None:  # runs in the child before exec
            # Copies first: the pipe ends may themselves be fds 3 or 4.
            reading, writing = os.dup(to_browser_read), os.dup(from_browser_write)
            os.dup2(reading, 3)
            os.dup2(writing, 4)

        arguments = [str(chromium), "--headless", "--remote-debugging-pipe", "--disable-gpu",
                     "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                     "--disable-extensions", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--mute-audio",
                     "--hide-scrollbars", f"--user-data-dir={profile}"]
        if os.geteuid() == 0:  # Chromium refuses to start its sandbox as root
            arguments.append("--no-sandbox")
        # The pipe ends must land on fds 3 and 4 exactly; close_fds would close
        # them after preexec_fn, and Python's own descriptors are not inheritable.
        self.process = subprocess.Popen(
            [*arguments, "about:blank"], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False,
            preexec_fn=wire_pipes)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, *,
             session: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """Send one command and return its result; events read meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method,
                                   "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float) -> None:
        """Read messages until the event ``method`` arrives (it is kept in ``events``)."""
        deadline = time.monotonic() + timeout
        while not any(event.get("method") == method for event in self.events):
            self.events.append(self._receive(deadline))

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._read_fd], [], [], remaining)
            if ready:
                chunk = os.read(self._read_fd, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"Chromium exited (code {self.process.poll()})")
                self._buffer += chunk
        record, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(record)

    def close(self) -> None:
        """Ask the browser to quit; kill it if it does not."""
        with contextlib.suppress(OSError):  # the browser may be gone already
            os.write(self._write_fd, json.dumps(
                {"id": 0, "method": "Browser.close", "params": {}}).encode() + b"\0")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._write_fd, self._read_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _console_errors(events: list[dict[str, Any]]) -> list[str]:
    """Error messages in the DevTools events, in the order they came."""
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ERROR_TYPES:
            text = " ".join(str(arg.get("value", arg.get("description", "")))
                            for arg in params.get("args", []))
            errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            description = details.get("exception", {}).get("description", "")
            errors.append(f"uncaught exception: {details.get('text', '')} {description}".strip())
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"{entry.get('source', 'log')}: {entry.get('text', '')} "
                          f"{entry.get('url', '')}".strip())
    return errors


def check_in_chromium(html: str | os.PathLike, *, screenshot: str | os.PathLike | None = None,
                      width: int = 1280, timeout: float = 60.0,
                      chromium: str | os.PathLike | None = None) -> BrowserCheck:
    """Open ``html`` in headless Chromium; report console errors and broken images.

    Parameters
    ----------
    html : path-like
        The page to open (a local file).
    screenshot : path-like, optional
        Where to save a full-page PNG screenshot.
    width : int
        Viewport width in CSS pixels.
    timeout : float
        Seconds to wait for Chromium at each step.
    chromium : path-like, optional
        The browser executable; by default :func:`find_chromium`.

    Returns
    -------
    BrowserCheck

    Raises
    ------
    InputMissingError
        When the page or the browser does not exist.

    Examples
    --------
    >>> import tempfile
    >>> page = Path(tempfile.mkdtemp()) / "page.html"
    >>> _ = page.write_text("<!doctype html><title>t</title><p>hello</p>")
    >>> find_chromium() is None or check_in_chromium(page).ok
    True
    """
    html = Path(html).absolute()
    if not html.is_file():
        raise InputMissingError("the page to open does not exist", path=html,
                                fix="build the report first")
    executable = Path(chromium) if chromium else find_chromium()
    if executable is None:
        raise InputMissingError("Chromium is not installed", path="chromium",
                                fix="install it (Debian: apt-get install chromium) or set "
                                    "BIDS_AFFECT_CHROMIUM to its path")
    with tempfile.TemporaryDirectory(prefix="bids_affect-chromium-") as profile:
        browser = _DevToolsPipe(executable, Path(profile))
        try:
            target = browser.send("Target.createTarget", {"url": "about:blank"},
                                  timeout=timeout)["targetId"]
            session = browser.send("Target.attachToTarget",
                                   {"targetId": target, "flatten": True},
                                   timeout=timeout)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                browser.send(f"{domain}.enable", session=session, timeout=timeout)
            browser.send("Emulation.setDeviceMetricsOverride",
                         {"width": width, "height": 900, "deviceScaleFactor": 1,
                          "mobile": False}, session=session, timeout=timeout)
            navigation = browser.send("Page.navigate", {"url": html.as_uri()},
                                      session=session, timeout=timeout)
            if navigation.get("errorText"):
                raise RuntimeError(f"Chromium could not open {html}: "
                                   f"{navigation['errorText']}")
            browser.wait_for("Page.loadEventFired", timeout)
            broken = browser.send("Runtime.evaluate",
                                  {"expression": _BROKEN_IMAGES_JS, "awaitPromise": True,
                                   "returnByValue": True}, session=session, timeout=timeout)
            count = browser.send("Runtime.evaluate",
                                 {"expression": "document.images.length",
                                  "returnByValue": True}, session=session, timeout=timeout)
            written = None
            if screenshot is not None:
                written = _save_screenshot(browser, session, Path(screenshot), width, timeout)
            # Messages logged while the screenshot was taken count too.
            browser.send("Runtime.evaluate", {"expression": "0"}, session=session,
                         timeout=timeout)
        finally:
            browser.close()
    return BrowserCheck(url=html.as_uri(), errors=_console_errors(browser.events),
                        broken_images=list(broken["result"].get("value") or []),
                        n_images=int(count["result"]["value"]), screenshot=written)


def _save_screenshot(browser: _DevToolsPipe, session: str, path: Path, width: int,
                     timeout: float) -> Path:
    """Capture the whole page (not only the viewport) as PNG."""
    from bids_affect.io.derivatives import atomic_path

    metrics = browser.send("Page.getLayoutMetrics", session=session, timeout=timeout)
    height = int(metrics["cssContentSize"]["height"]) + 1
    shot = browser.send("Page.captureScreenshot",
                        {"format": "png", "captureBeyondViewport": True,
                         "clip": {"x": 0, "y": 0, "width": width, "height": height,
                                  "scale": 1}},
                        session=session, timeout=timeout)
    with atomic_path(path) as tmp:
        tmp.write_bytes(base64.b64decode(shot["data"]))
    return path
