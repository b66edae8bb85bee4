"""Builders the embeddings-server tests and benchmark share: a served app
on a free loopback port, and headless Chromium driven over the DevTools
protocol (`--remote-debugging-pipe`: JSON messages over two pipes, no
websocket library)."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def serving(app):
  """`app` under uvicorn on a free loopback port -> its base URL."""
  import uvicorn  # pylint: disable=g-import-not-at-top
  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind(("127.0.0.1", 0))
  port = sock.getsockname()[1]
  server = uvicorn.Server(uvicorn.Config(
      app, log_level="critical", timeout_graceful_shutdown=0.2))
  thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                            daemon=True)
  thread.start()
  deadline = time.monotonic() + 60
  while not server.started:
    assert thread.is_alive() and time.monotonic() < deadline, "no server"
    time.sleep(0.01)
  try:
    yield f"http://127.0.0.1:{port}"
  finally:
    server.should_exit = True
    thread.join(20)
    sock.close()


class Browser:
  """Headless Chromium; `call` sends one DevTools command, `page_call` one
  to the page opened by `open`."""

  def __init__(self, profile_dir: str, width: int = 1200, height: int = 800):
    read_in, write_in = os.pipe()    # We write, Chromium reads (its fd 3).
    read_out, write_out = os.pipe()  # Chromium writes (its fd 4), we read.
    # The shell moves the pipes to fds 3 and 4, where Chromium wants them.
    self.proc = subprocess.Popen(
        ["sh", "-c", 'exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null',
         CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--hide-scrollbars", "--remote-debugging-pipe",
         f"--window-size={width},{height}",
         f"--user-data-dir={profile_dir}", "about:blank"],
        stdin=read_in, stdout=write_out, stderr=subprocess.DEVNULL)
    os.close(read_in)
    os.close(write_out)
    self._w, self._r = os.fdopen(write_in, "wb"), os.fdopen(read_out, "rb")
    self._next, self._buf, self.session = 0, b"", None
    self.width, self.height = width, height

  def _read(self) -> dict:
    while b"\0" not in self._buf:
      chunk = self._r.read1(1 << 16)
      if not chunk:
        raise RuntimeError("chromium closed the DevTools pipe")
      self._buf += chunk
    msg, self._buf = self._buf.split(b"\0", 1)
    return json.loads(msg)

  def call(self, method: str, session: str | None = None, **params):
    self._next += 1
    msg = {"id": self._next, "method": method, "params": params}
    if session:
      msg["sessionId"] = session
    self._w.write(json.dumps(msg).encode() + b"\0")
    self._w.flush()
    while True:
      reply = self._read()
      if reply.get("id") == self._next:  # Events (no id) are skipped.
        if "error" in reply:
          raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

  def open(self, url: str) -> None:
    target = self.call("Target.createTarget", url=url)["targetId"]
    self.session = self.call("Target.attachToTarget", targetId=target,
                             flatten=True)["sessionId"]
    # The viewport itself (--window-size counts the window's frame too).
    self.page_call("Emulation.setDeviceMetricsOverride", width=self.width,
                   height=self.height, deviceScaleFactor=1, mobile=False)

  def page_call(self, method: str, **params):
    return self.call(method, self.session, **params)

  def evaluate(self, expression: str):
    return self.page_call("Runtime.evaluate", expression=expression,
                          returnByValue=True)["result"].get("value")

  def wait_for(self, expression: str, timeout: float = 30.0):
    """Polls until `expression` is truthy -> its value."""
    deadline = time.monotonic() + timeout
    while True:
      value = self.evaluate(expression)
      if value or time.monotonic() > deadline:
        return value
      time.sleep(0.1)

  def close(self) -> None:
    with contextlib.suppress(Exception):
      self.call("Browser.close")
    self._w.close()
    self._r.close()
    try:
      self.proc.wait(10)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
