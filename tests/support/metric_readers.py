"""The software a site reads cmover's metrics with, run privately on loopback: Prometheus and graphite-web.

Used by the monitoring tests (tests/integration/test_monitoring.py) and by bench/monitoring_pictures.py.
Both servers come from Debian packages (``scripts/services.sh ensure_prometheus`` / ``ensure_graphite_web``),
listen on 127.0.0.1 on a free port and keep everything they write under a directory of the caller's. Also
here: :class:`SenderLoop`, ``send_graphite.py`` run again and again the way cron runs it, only more often.

Every failure raises :class:`ReaderError` with what the server said; nothing here skips.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]

#: The interpreter of the system's packages (graphite-web is a Django application of /usr/bin/python3).
SYSTEM_PYTHON = "/usr/bin/python3"


class ReaderError(AssertionError):
    """A reader could not be started or answered with an error."""


def free_port() -> int:
    """A loopback TCP port nothing listens on (bound once by us, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure(function: str) -> None:
    """Run ``scripts/services.sh FUNCTION`` (installs what is missing); raise with its output when it fails."""
    r = subprocess.run(["bash", str(REPO / "scripts" / "services.sh"), function], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=900)
    if r.returncode != 0:
        raise ReaderError(f"scripts/services.sh {function} failed (exit {r.returncode}):\n{r.stdout}{r.stderr}")


def _get(url: str, data: dict[str, str] | None = None, timeout: float = 30) -> bytes:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with urllib.request.urlopen(url, data=body, timeout=timeout) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        raise ReaderError(f"{url} answered HTTP {exc.code}: {exc.read().decode(errors='replace')[:2000]}") from None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- Prometheus ----------------------------------------------------------------------------------------------


class Prometheus:
    """A private Prometheus server: ``config`` (a prometheus.yml as a dict) in ``workdir``, its TSDB there too.

    :meth:`query` and :meth:`query_range` are the HTTP API's; each raises :class:`ReaderError` when the
    expression does not parse or evaluate.
    """

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_file = workdir / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = workdir / "prometheus.log"
        for _ in range(3):  # the free port may be taken between free_port() and the server's bind
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            with open(self.log, "wb") as out:
                self.proc = subprocess.Popen(
                    ["prometheus", f"--config.file={self.config_file}", f"--storage.tsdb.path={workdir / 'data'}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                    cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            if self._wait_ready():
                return
            if "address already in use" not in self.log_text():
                break
        raise ReaderError(f"prometheus did not start:\n{self.log_text()[-4000:]}")

    def _wait_ready(self, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                _get(f"{self.url}/-/ready", timeout=2)
                return True
            except (OSError, ReaderError):
                time.sleep(0.1)
        self.stop()
        return False

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH?params; the ``data`` of a successful answer."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            doc = json.loads(_get(url))
        except ReaderError as exc:  # 400/422: the expression is wrong; the body says why
            raise ReaderError(f"Prometheus refused {params}: {exc}") from None
        if doc.get("status") != "success":
            raise ReaderError(f"Prometheus refused {params}: {doc}")
        return doc["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query; the result vector (``[{"metric": labels, "value": [t, "v"]}, ...]``)."""
        data = self.api("query", query=expr, **({"time": f"{at:.3f}"} if at is not None else {}))
        if data["resultType"] != "vector":
            raise ReaderError(f"{expr!r} is a {data['resultType']}, not an instant vector")
        return list(data["result"])

    def samples(self, selector: str, window: str, at: float) -> dict[frozenset[tuple[str, str]], list[float]]:
        """Every sample of the series of ``selector`` in the ``window`` up to ``at``: {labels: values}, oldest first."""
        data = self.api("query", query=f"{selector}[{window}]", time=f"{at:.3f}")
        return {frozenset(r["metric"].items()): [float(v) for _, v in r["values"]] for r in data["result"]}

    def values(self, expr: str, at: float | None = None) -> dict[frozenset[tuple[str, str]], float]:
        """An instant query as {labels: value}."""
        return {frozenset(r["metric"].items()): float(r["value"][1]) for r in self.query(expr, at)}

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step}")
        return list(data["result"])

    def wait_for(self, expr: str, check: Any, timeout: float = 60, what: str = "") -> dict[frozenset[tuple[str, str]],
                                                                                              float]:
        """Poll ``expr`` until ``check(values)`` is true; return those values."""
        deadline = time.monotonic() + timeout
        got: dict[frozenset[tuple[str, str]], float] = {}
        while time.monotonic() < deadline:
            got = self.values(expr)
            if check(got):
                return got
            time.sleep(0.2)
        raise ReaderError(f"Prometheus: {what or expr} not seen in {timeout} s; last {got}\n{self.log_text()[-2000:]}")

    def stop(self) -> None:
        _stop(self.proc)


# -- graphite-web --------------------------------------------------------------------------------------------

_SETTINGS = """\
# graphite-web settings of one private instance (written by tests/support/metric_readers.py).
SECRET_KEY = {secret!r}
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
TIME_ZONE = "UTC"
DEBUG = False
LOG_ROTATION = False
DEFAULT_XFILES_FACTOR = 0
FUNCTION_PLUGINS = []
STORAGE_DIR = {workdir!r}
LOG_DIR = {log_dir!r}
INDEX_FILE = {index!r}
WHISPER_DIR = {whisper!r}
STANDARD_DIRS = [WHISPER_DIR]
# Points carbon holds in memory and has not written yet are read from its cache-query port.
CARBONLINK_HOSTS = {carbonlink!r}
DATABASES = {{"default": {{"NAME": {db!r}, "ENGINE": "django.db.backends.sqlite3"}}}}
"""


def carbon_query_port(whisper_dir: Path) -> int:
    """The cache-query port of the carbon-cache storing into ``whisper_dir`` (``CACHE_QUERY_PORT`` of the
    carbon.conf that ``scripts/services.sh ensure_carbon`` writes beside its storage directory)."""
    conf = whisper_dir.parent.parent / "conf" / "carbon.conf"
    for line in conf.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "CACHE_QUERY_PORT":
            return int(value)
    raise ReaderError(f"no CACHE_QUERY_PORT in {conf}")


class GraphiteWeb:
    """graphite-web (the Debian package) serving the whisper files of ``whisper_dir`` on 127.0.0.1.

    Its settings module, SQLite database (migrated at start), search index and logs live in ``workdir``.
    Served by tests/support/graphite_web_server.py: the package's WSGI application in a threaded WSGI server.
    """

    def __init__(self, workdir: Path, whisper_dir: Path, carbon_host: str = "127.0.0.1") -> None:
        self.workdir = workdir
        (workdir / "log").mkdir(parents=True, exist_ok=True)
        (workdir / "cmover_graphite_settings.py").write_text(_SETTINGS.format(
            secret=secrets.token_hex(32), workdir=str(workdir), log_dir=str(workdir / "log"),
            index=str(workdir / "index"), whisper=str(whisper_dir), db=str(workdir / "graphite.db"),
            carbonlink=[f"{carbon_host}:{carbon_query_port(whisper_dir)}:a"]))
        self.log = workdir / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DJANGO", "GRAPHITE"))}
        with open(self.log, "wb") as out:
            server = REPO / "tests" / "support" / "graphite_web_server.py"
            self.proc = subprocess.Popen([SYSTEM_PYTHON, str(server), str(workdir)],
                                         cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=out)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode(errors="replace")  # "serving http://127.0.0.1:PORT/" when ready
        if not line.startswith("serving "):
            self.stop()
            raise ReaderError(f"graphite-web did not start: {line!r}\n{self.log_text()[-4000:]}")
        self.url = line.split()[1].rstrip("/")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def render(self, targets: list[str], start: float, end: float, **params: Any) -> list[dict[str, Any]]:
        """``/render?format=json`` of ``targets`` from ``start`` to ``end`` (Unix seconds): the series list."""
        query = [("target", t) for t in targets] + [("from", str(int(start))), ("until", str(int(end) + 1)),
                                                    ("format", "json")] + [(k, str(v)) for k, v in params.items()]
        return list(json.loads(_get(f"{self.url}/render?{urllib.parse.urlencode(query)}")))

    def png(self, params: dict[str, Any]) -> bytes:
        """``/render`` of ``params`` (targets as a list) as a PNG image."""
        query = [(k, str(x)) for k, v in params.items() for x in (v if isinstance(v, list) else [v])]
        data = _get(f"{self.url}/render?{urllib.parse.urlencode(query)}")
        if not data.startswith(b"\x89PNG"):
            raise ReaderError(f"graphite-web answered no PNG for {params}: {data[:200]!r}")
        return data

    def post(self, path: str, data: dict[str, str]) -> Any:
        return json.loads(_get(f"{self.url}{path}", data=data))

    def get(self, path: str) -> bytes:
        return _get(f"{self.url}{path}")

    def stop(self) -> None:
        _stop(self.proc)
        if self.proc.stdout:
            self.proc.stdout.close()


# -- send_graphite.py, over and over -------------------------------------------------------------------------

_LOOP = """\
import signal, sys, time
from cmover.ops.graphite import main  # what send_graphite.py runs
pause = float(sys.argv[1])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
sends = 0
while not stop:
    code = main([])
    if code:
        print(f"send_graphite exited {code}", file=sys.stderr, flush=True)
    sends += 1
    time.sleep(pause)
print(sends, flush=True)
"""


class SenderLoop:
    """What ``send_graphite.py`` does (its ``main``), every ``pause`` seconds in one process, with the
    environment ``env`` of a site, until :meth:`stop`: cron's job, minus the interpreter start."""

    def __init__(self, env: dict[str, str], pause: float = 0.2) -> None:
        self.proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "python"), "-c", _LOOP, str(pause)], cwd=REPO,
                                     env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def stop(self) -> tuple[int, str]:
        """Stop after the send under way; return (sends made, what it printed on stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        sends = int(out.split()[-1]) if out.split() else 0
        return sends, err.decode(errors="replace")


__all__ = ["Prometheus", "GraphiteWeb", "SenderLoop", "ReaderError", "free_port", "ensure", "carbon_query_port",
           "REPO", "SYSTEM_PYTHON"]
