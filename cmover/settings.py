"""Load, validate and freeze the site configuration (``config.py``).

``config.py`` is read as data with :func:`runpy.run_path`; every name it defines must be known here
(a typo is a :class:`ConfigError`, not a silently ignored setting). The file is found at
``$CMOVER_CONFIG``, else ``./config.py``, else the ``config.py`` beside the installed package's source
tree. The broker is configured by ``rabbitmq/rabbitmq.conf`` next to the config file (its host, one
line); the password lives in ``rabbitmq/rabbitmq_<USERNAME>.conf``. No broker file means the embedded
mode. This module is the only one that knows where these files are.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import runpy
import types
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmover.errors import ConfigError
from cmover.lustre.layout import POLICIES

# name in config.py -> (Settings field, type, default)
_SCHEMA: dict[str, tuple[str, type | tuple[type, ...], Any]] = {
    "USERNAME": ("username", str, "cmover"),
    "OLDEST_DATE": ("oldest_date", (int, float), 0),
    "NEWEST_DATE": ("newest_date", (int, float), 0),
    "REPORT_INTERVAL": ("report_interval", (int, float), 30),
    "STATS_ENABLED": ("stats_enabled", bool, True),
    "MDS_IS_STRIPED": ("mds_is_striped", bool, True),
    "SOURCE_IS_MOUNT": ("source_is_mount", bool, False),
    "source_mount": ("source_mount", str, ""),
    "target_mount": ("target_mount", str, ""),
    "BATCH": ("batch", int, 1000),
    "INLINE_ENTRIES": ("inline_entries", int, 2000),
    "INLINE_SECONDS": ("inline_seconds", (int, float), 0.5),
    "BATCH_SECONDS": ("batch_seconds", (int, float), 120),
    "CHUNK_THRESHOLD": ("chunk_threshold", int, 1 << 30),
    "CHUNK_SIZE": ("chunk_size", int, 256 << 20),
    "EXCLUDE_FILE": ("exclude_file", str, ""),
    "MDT_LIST": ("mdt_list", list, []),
    "LUSTRE_LAYOUT": ("lustre_layout", str, "keep"),
    "LUSTRE_RESTRIPE": ("lustre_restripe", bool, False),
    "LUSTREAPI": ("lustreapi", str, ""),
    "MEMCACHED": ("memcached", str, "127.0.0.1:11211"),
    "MAX_DELIVERIES": ("max_deliveries", int, 5),
    "LOCAL_JOBS": ("local_jobs", int, 0),
    "LOG_DIR": ("log_dir", str, "var/log"),
    "GRAPHITE_HOST": ("graphite_host", str, "127.0.0.1"),
    "GRAPHITE_PORT": ("graphite_port", int, 2003),
    "GRAPHITE_PREFIX": ("graphite_prefix", str, "cmover"),
}

_USERNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: Graphite metric path: dot-separated words (no empty word, no whitespace: the plaintext protocol's separator).
GRAPHITE_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Validated site settings; built once per process and passed explicitly."""

    username: str = "cmover"
    oldest_date: float = 0
    newest_date: float = 0
    report_interval: float = 30
    stats_enabled: bool = True
    mds_is_striped: bool = True
    source_is_mount: bool = False
    source_mount: str = ""
    target_mount: str = ""
    batch: int = 1000
    inline_entries: int = 2000
    inline_seconds: float = 0.5
    batch_seconds: float = 120
    chunk_threshold: int = 1 << 30
    chunk_size: int = 256 << 20
    exclude_file: str = ""
    mdt_list: tuple[int, ...] = ()  # empty: every MDT of the target
    lustre_layout: str = "keep"
    lustre_restripe: bool = False
    lustreapi: str = ""
    memcached: str = "127.0.0.1:11211"
    max_deliveries: int = 5
    local_jobs: int = 0
    log_dir: str = "var/log"
    graphite_host: str = "127.0.0.1"
    graphite_port: int = 2003
    graphite_prefix: str = "cmover"
    config_path: str = ""
    rabbitmq_dir: str = ""
    broker_host: str | None = field(default=None)

    @property
    def broker_configured(self) -> bool:
        return self.broker_host is not None

    @property
    def password_file(self) -> Path:
        return Path(self.rabbitmq_dir) / f"rabbitmq_{self.username}.conf"

    def broker_url(self) -> str:
        """The AMQP URL of the configured broker; ConfigError when the broker or password is missing."""
        if self.broker_host is None:
            raise ConfigError(
                f"no broker configured: {Path(self.rabbitmq_dir) / 'rabbitmq.conf'} is missing; "
                "write the broker host into it (see rabbitmq/rabbitmq.conf.example)"
            )
        pw_file = self.password_file
        try:
            password = pw_file.read_text().strip()
        except FileNotFoundError:
            raise ConfigError(
                f"password file {pw_file} is missing; create it with rabbitmq/rabbitmq_init.sh on the broker host"
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"cannot read password file {pw_file}: {exc.strerror}; check its owner and mode"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(f"password file {pw_file} is not text; re-create it with rabbitmq/rabbitmq_init.sh") \
                from None
        if not password:
            raise ConfigError(f"password file {pw_file} is empty; re-create it with rabbitmq/rabbitmq_init.sh")
        host = self.broker_host
        if ":" not in host.rsplit("]", 1)[-1]:
            host += ":5672"
        quote = urllib.parse.quote
        user = quote(self.username, safe="")
        return f"amqp://{user}:{quote(password, safe='')}@{host}/{user}"

    def log_path(self) -> Path:
        p = Path(self.log_dir)
        return p if p.is_absolute() else Path(self.config_path).parent / p

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def find_config(explicit: str | None = None) -> Path:
    """Locate config.py (see module doc); ConfigError when an explicitly named file is missing."""
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise ConfigError(f"config file {explicit} not found; pass an existing file with --config or CMOVER_CONFIG")
        return p.resolve()
    env = os.environ.get("CMOVER_CONFIG")
    if env:
        p = Path(env)
        if not p.is_file():
            raise ConfigError(f"CMOVER_CONFIG={env} does not name a file; point it at your config.py")
        return p.resolve()
    for candidate in (Path.cwd() / "config.py", Path(__file__).resolve().parent.parent / "config.py"):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError("no config.py found; run from the cmover directory or set CMOVER_CONFIG")


def _show(value: Any) -> str:
    """``repr`` for a one-line message, whatever config.py bound to a name (shortened, never raising)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:200] + "..."


def _show_exc(exc: BaseException) -> str:
    try:
        text = " ".join(str(exc).split())
    except Exception:
        text = ""
    return (text if len(text) <= 500 else text[:500] + "...") or "no message"


def _check(name: str, value: Any, typ: type | tuple[type, ...]) -> Any:
    # bool is an int subclass: reject True where a number is expected and 1 where a bool is expected.
    ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
    if not ok:
        want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise ConfigError(f"config setting {name} = {_show(value)} must be a {want}; fix it in config.py")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config setting {name} = {value!r} must be a finite number; fix it in config.py")
    if isinstance(value, str) and "\0" in value:
        raise ConfigError(f"config setting {name} = {_show(value)} must not contain a NUL character; fix config.py")
    return value


def from_mapping(values: dict[str, Any], *, config_path: str = "", rabbitmq_dir: str = "") -> Settings:
    """Validate a mapping of config.py names and build :class:`Settings` (broker files not read)."""
    unknown = sorted(k if isinstance(k, str) and k.isidentifier() else _show(k) for k in values
                     if not (isinstance(k, str) and (k.startswith("_") or k in _SCHEMA)))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} in config; remove them or fix the spelling")
    kw: dict[str, Any] = {}
    for name, (fname, typ, default) in _SCHEMA.items():
        kw[fname] = _check(name, values.get(name, default), typ)
    if not _USERNAME_RE.fullmatch(kw["username"]):
        raise ConfigError(f"USERNAME {_show(kw['username'])} may only hold letters, digits, '_', '.', '-'; "
                          "fix config.py")
    for name in ("OLDEST_DATE", "NEWEST_DATE"):
        if not 0 <= kw[_SCHEMA[name][0]] <= MAX_AGE:
            raise ConfigError(f"{name} must be between 0 and {MAX_AGE} seconds (0 disables the filter); "
                              "fix config.py")
    if kw["batch"] < 1 or kw["batch"] > 100_000:
        raise ConfigError(f"BATCH = {kw['batch']} must be between 1 and 100000; fix config.py")
    if kw["inline_entries"] < 0 or kw["inline_seconds"] < 0:
        raise ConfigError("INLINE_ENTRIES and INLINE_SECONDS must be >= 0; fix config.py")
    if kw["batch_seconds"] <= 0:
        raise ConfigError("BATCH_SECONDS must be > 0 seconds; fix config.py")
    check_chunking(kw["chunk_threshold"], kw["chunk_size"], "CHUNK_THRESHOLD", "CHUNK_SIZE", "fix config.py")
    if kw["max_deliveries"] < 1:
        raise ConfigError("MAX_DELIVERIES must be >= 1; fix config.py")
    if not 0 <= kw["local_jobs"] <= MAX_LOCAL_JOBS:
        raise ConfigError(f"LOCAL_JOBS must be between 0 and {MAX_LOCAL_JOBS} processes (0 = twice the number "
                          "of cores); fix config.py")
    host, _, port = kw["memcached"].rpartition(":")
    if not host or any(c.isspace() or c == "/" for c in host) or not (port.isascii() and port.isdigit()) \
            or len(port) > 5 or not 1 <= int(port) <= 65535:
        raise ConfigError(f"MEMCACHED = {_show(kw['memcached'])} must be HOST:PORT (e.g. \"127.0.0.1:11211\"); "
                          "fix config.py")
    if kw["report_interval"] <= 0:
        raise ConfigError("REPORT_INTERVAL must be > 0 seconds; fix config.py")
    mdts = kw["mdt_list"]
    if not all(isinstance(m, int) and not isinstance(m, bool) and m >= -1 for m in mdts) \
            or (-1 in mdts and len(mdts) > 1):
        raise ConfigError(f"MDT_LIST = {_show(mdts)} must be a list of MDT indices, [] for all MDTs or [-1] for the "
                          "filesystem's balancing; fix config.py")
    kw["mdt_list"] = tuple(mdts)
    if kw["lustre_layout"] not in POLICIES:
        raise ConfigError(f"LUSTRE_LAYOUT = {_show(kw['lustre_layout'])} must be one of {', '.join(POLICIES)}; "
                          "fix config.py")
    if not kw["graphite_host"] or any(c.isspace() or c == "/" for c in kw["graphite_host"]):
        raise ConfigError(f"GRAPHITE_HOST = {_show(kw['graphite_host'])} must be a host name or address (no spaces, "
                          "no URL); fix config.py")
    if not 1 <= kw["graphite_port"] <= 65535:
        raise ConfigError(f"GRAPHITE_PORT = {kw['graphite_port']} must be a TCP port (1-65535; carbon's plaintext "
                          "port is 2003 by default); fix config.py")
    if not GRAPHITE_PREFIX_RE.fullmatch(kw["graphite_prefix"]):
        raise ConfigError(f"GRAPHITE_PREFIX = {_show(kw['graphite_prefix'])} must be dot-separated words of letters, "
                          "digits, '_' and '-' (e.g. \"cmover\" or \"site.cmover\"); fix config.py")
    for name in ("source_mount", "target_mount"):
        v = kw[name]
        if v and not os.path.isabs(v):
            raise ConfigError(f"{name} = {_show(v)} must be an absolute path; fix config.py")
        kw[name] = os.path.normpath(v) if v else ""
    src, dst = kw["source_mount"], kw["target_mount"]
    if src and dst and (_inside(src, dst) or _inside(dst, src)):
        # Workers confine every message to these trees: nested, a message could write into the source.
        raise ConfigError(f"source_mount = {_show(src)} and target_mount = {_show(dst)} overlap; they must be "
                          "separate trees (neither inside the other); fix config.py")
    return Settings(**kw, config_path=config_path, rabbitmq_dir=rabbitmq_dir)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


MIN_CHUNK = 1 << 20
MAX_AGE = 10**11  # seconds (some 3000 years): more is a typo, and overflows the nanosecond cutoffs
MAX_LOCAL_JOBS = 1024  # processes of an embedded run


def check_chunking(threshold: int, size: int, t_name: str, s_name: str, fix: str) -> None:
    """Raise ConfigError unless ``threshold`` (0 = never chunk) and chunk ``size`` make sense together."""
    if threshold < 0:
        raise ConfigError(f"{t_name} = {threshold} must be >= 0 bytes (0 disables chunked copies); {fix}")
    if size < MIN_CHUNK:
        raise ConfigError(f"{s_name} = {size} must be at least {MIN_CHUNK} bytes (1 MiB); {fix}")
    if threshold and threshold < size:
        raise ConfigError(f"{t_name} = {threshold} is below {s_name} = {size}: a chunked file must have more "
                          f"than one chunk; {fix}")


def read_broker_host(rabbitmq_dir: Path) -> str | None:
    """The broker host from ``rabbitmq.conf`` (first non-comment line), or None when the file is absent."""
    conf = rabbitmq_dir / "rabbitmq.conf"
    try:
        text = conf.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {conf}: {exc.strerror}; check its mode") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{conf} is not text; it must hold only the broker host (host or host:port)") from None
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            if any(c.isspace() or not c.isprintable() for c in line) or "/" in line or "@" in line:
                raise ConfigError(f"{conf} must hold only the broker host (host or host:port), not {_show(line)}")
            return line
    return None


def load_settings(path: str | None = None) -> Settings:
    """Find, read and validate config.py and the broker host file; raise ConfigError on any problem."""
    cfg = find_config(path)
    try:
        values = runpy.run_path(str(cfg))
    except (Exception, SystemExit) as exc:  # a syntax error or an exit() in config.py: a one-line message
        why = _show_exc(exc)
        raise ConfigError(f"cannot load {cfg}: {type(exc).__name__}: {why}; fix the file") from None
    # Imported modules (e.g. "import os" for a computed path) are not settings.
    values = {k: v for k, v in values.items() if not k.startswith("__") and not isinstance(v, types.ModuleType)}
    rabbitmq_dir = Path(os.environ.get("CMOVER_RABBITMQ_DIR") or cfg.parent / "rabbitmq")
    s = from_mapping(values, config_path=str(cfg), rabbitmq_dir=str(rabbitmq_dir))
    return s.replace(broker_host=read_broker_host(rabbitmq_dir))
