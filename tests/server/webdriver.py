"""A small W3C WebDriver client for Debian's chromium + chromedriver (plain HTTP through httpx).

Chromium runs headless with a fresh profile and no background network traffic; the pages it
opens are the test servers on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

import httpx

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1200,900"]
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def missing_browser() -> str | None:
    """Why no browser test can run here, or None."""
    for program, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver")):
        if shutil.which(program) is None:
            return f"{program} is not installed (apt-get install -y chromium chromium-driver; .ci/run does it as root)"
    return None


class Browser:
    """chromedriver on an ephemeral port and one headless chromium session."""

    def __init__(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        self.profile = tempfile.TemporaryDirectory(prefix="plmkit-chromium-")
        self.driver = subprocess.Popen([shutil.which("chromedriver") or "chromedriver", f"--port={port}"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.http.get("/status").json()["value"]["ready"]:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.05)
        options = {"binary": shutil.which("chromium"), "args": CHROMIUM_ARGS + [f"--user-data-dir={self.profile.name}"]}
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        answer = self.http.request(method, path, json=body)
        value = answer.json().get("value")
        if answer.status_code != 200:
            raise RuntimeError(f"webdriver {method} {path}: {value}")
        return value

    def _session(self, method: str, path: str, body: dict | None = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    def open(self, url: str) -> None:
        self._session("POST", "/url", {"url": url})

    def js(self, script: str, *args: Any) -> Any:
        """Run `script` (a function body; arguments in `arguments`) and return its value."""
        return self._session("POST", "/execute/sync", {"script": script, "args": list(args)})

    def element(self, css: str) -> str:
        return self._session("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def type(self, css: str, text: str) -> None:
        """Type `text` into the element, key by key."""
        self._session("POST", f"/element/{self.element(css)}/value", {"text": text})

    def click(self, css: str) -> None:
        self._session("POST", f"/element/{self.element(css)}/click", {})

    def wait(self, script: str, timeout: float = 30.0) -> Any:
        """Poll `script` until it returns something truthy; that value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(script)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"the page never satisfied: {script}")

    def close(self) -> None:
        try:
            if getattr(self, "session", None):
                self.http.delete(f"/session/{self.session}")
        finally:
            self.http.close()
            self.driver.terminate()
            try:
                self.driver.wait(10)
            except subprocess.TimeoutExpired:
                self.driver.kill()
            self.profile.cleanup()
