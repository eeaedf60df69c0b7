"""Load, validate and freeze the site configuration (``config.py``).

``config.py`` is read as data (:func:`run_config`, run as a script is run); every name it defines must be known here
(a typo is a :class:`ConfigError`, not a silently ignored setting). The file read is the one named by
``--config``, else by ``$CMOVER_CONFIG`` (either must exist), else ``./config.py`` in the current
directory, else the ``config.py`` beside the package's source tree (:data:`PACKAGE_CONFIG`). A file that
is found is always validated; only when there is none at all may the embedded commands run on the
defaults (:func:`load_settings` with ``required=False``). The broker is configured by
``rabbitmq/rabbitmq.conf`` next to the config file (its host, one line); the password lives in
``rabbitmq/rabbitmq_<USERNAME>.conf``. No broker file means the embedded
mode. This module is the only one that knows where these files are.
"""

from __future__ import annotations

import math
import os
import re
import types
from typing import Any

from cmover.core.errors import ConfigError
from cmover.core.frozen import NamedTuple
from cmover.core.idmap import Pairs, from_config
from cmover.core.logformat import LOG_FORMATS
from cmover.core.policies import HSM_POLICIES, POLICIES
from cmover.core.sizes import check_chunking, check_sizes, parse_size

# name in config.py -> (Settings field, type, default)
_SCHEMA: dict[str, tuple[str, type | tuple[type, ...], Any]] = {
    "USERNAME": ("username", str, "cmover"),
    "OLDEST_DATE": ("oldest_date", (int, float), 0),
    "NEWEST_DATE": ("newest_date", (int, float), 0),
    "MIN_SIZE": ("min_size", (int, str), 0),
    "MAX_SIZE": ("max_size", (int, str), 0),
    "REPORT_INTERVAL": ("report_interval", (int, float), 30),
    "STATS_ENABLED": ("stats_enabled", bool, True),
    "MDS_IS_STRIPED": ("mds_is_striped", bool, True),
    "SOURCE_IS_MOUNT": ("source_is_mount", bool, False),
    "source_mount": ("source_mount", str, ""),
    "target_mount": ("target_mount", str, ""),
    "BATCH": ("batch", int, 1000),
    "INLINE_ENTRIES": ("inline_entries", int, 10000),
    "INLINE_SECONDS": ("inline_seconds", (int, float), 0.5),
    "BATCH_SECONDS": ("batch_seconds", (int, float), 120),
    "CHUNK_THRESHOLD": ("chunk_threshold", int, 1 << 30),
    "CHUNK_SIZE": ("chunk_size", int, 256 << 20),
    "EXCLUDE_FILE": ("exclude_file", str, ""),
    "MDT_LIST": ("mdt_list", list, []),
    "LUSTRE_LAYOUT": ("lustre_layout", str, "keep"),
    "LUSTRE_RESTRIPE": ("lustre_restripe", bool, False),
    "LUSTREAPI": ("lustreapi", str, ""),
    "HSM_POLICY": ("hsm_policy", str, "import"),
    "MEMCACHED": ("memcached", str, "127.0.0.1:11211"),
    "MAX_DELIVERIES": ("max_deliveries", int, 5),
    "LOCAL_JOBS": ("local_jobs", int, 0),
    "LOG_DIR": ("log_dir", str, "var/log"),
    "CHANGES_DIR": ("changes_dir", str, "var/changes"),
    "CHANGELOG_USERS": ("changelog_users", dict, {}),
    "LOG_FORMAT": ("log_format", str, "text"),
    "GRAPHITE_HOST": ("graphite_host", str, "127.0.0.1"),
    "GRAPHITE_PORT": ("graphite_port", int, 2003),
    "GRAPHITE_PREFIX": ("graphite_prefix", str, "cmover"),
    "STATE_DIR": ("state_dir", str, ""),
    "CLOCK_SKEW": ("clock_skew", (int, float), 2),
    "UID_MAP": ("uid_map", (dict, list, tuple, str), ()),
    "GID_MAP": ("gid_map", (dict, list, tuple, str), ()),
}

_USERNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: Graphite metric path: dot-separated words (no empty word, no whitespace: the plaintext protocol's separator).
GRAPHITE_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")


class Settings(NamedTuple):
    """Validated site settings; built once per process and passed explicitly."""

    username: str = "cmover"
    oldest_date: float = 0
    newest_date: float = 0
    min_size: int = 0
    max_size: int = 0
    report_interval: float = 30
    stats_enabled: bool = True
    mds_is_striped: bool = True
    source_is_mount: bool = False
    source_mount: str = ""
    target_mount: str = ""
    batch: int = 1000
    inline_entries: int = 10000
    inline_seconds: float = 0.5
    batch_seconds: float = 120
    chunk_threshold: int = 1 << 30
    chunk_size: int = 256 << 20
    exclude_file: str = ""
    mdt_list: tuple[int, ...] = ()  # empty: every MDT of the target
    lustre_layout: str = "keep"
    lustre_restripe: bool = False
    lustreapi: str = ""
    hsm_policy: str = "import"
    memcached: str = "127.0.0.1:11211"
    max_deliveries: int = 5
    local_jobs: int = 0
    log_dir: str = "var/log"
    changes_dir: str = "var/changes"  # change journals (cmover watch) and clean-pass records
    changelog_users: tuple[tuple[str, str], ...] = ()  # (FSNAME-MDTxxxx, clN): Lustre changelog users, sorted
    log_format: str = "text"  # "json": one JSON object per line (cmover.core.logformat)
    graphite_host: str = "127.0.0.1"
    graphite_port: int = 2003
    graphite_prefix: str = "cmover"
    state_dir: str = ""  # clean-pass records (cmover.core.cleanpass); "": $CMOVER_STATE_DIR or ~/.local/state/cmover
    clock_skew: float = 2  # seconds: how far clocks of the nodes and file servers may differ
    uid_map: Pairs = ()  # (FROM, TO) uids, sorted (cmover.core.idmap)
    gid_map: Pairs = ()
    config_path: str = ""  # the file read; "" when none was found and the defaults are used
    config_origin: str = ""  # how it was found ("named by --config", "in the current directory", ...)
    rabbitmq_dir: str = ""
    broker_host: str | None = None

    @property
    def broker_configured(self) -> bool:
        return self.broker_host is not None

    @property
    def password_file(self) -> str:
        return os.path.join(self.rabbitmq_dir, f"rabbitmq_{self.username}.conf")

    def broker_url(self) -> str:
        """The AMQP URL of the configured broker (:meth:`broker_login` as a URL, for Celery)."""
        host, user, password, vhost = self.broker_login()
        from urllib.parse import quote  # only a command that talks to the broker needs it

        return f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{host}/{quote(vhost, safe='')}"

    def broker_login(self) -> tuple[str, str, str, str]:
        """``(host:port, user, password, vhost)`` of the configured broker, read from its files; ConfigError
        when the broker or the password is missing. A command connects with these as they are: building the
        URL and parsing it again cost it urllib.parse and ipaddress, 2 ms of its start."""
        if self.broker_host is None:
            raise ConfigError(
                f"no broker configured: {os.path.join(self.rabbitmq_dir, 'rabbitmq.conf')} is missing; "
                "write the broker host into it (see rabbitmq/rabbitmq.conf.example)"
            )
        pw_file = self.password_file
        try:
            with open(pw_file) as f:
                password = f.read().strip()
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
        return host, self.username, password, self.username

    def log_path(self) -> str:
        """LOG_DIR, a relative path taken from the directory of config.py."""
        return self._beside_config(self.log_dir)

    def changes_path(self) -> str:
        """CHANGES_DIR, relative paths taken from the directory of config.py (as LOG_DIR)."""
        return self._beside_config(self.changes_dir)

    def _beside_config(self, path: str) -> str:
        # os.path, not pathlib: pathlib (and urllib.parse, ipaddress and fnmatch with it) is 7 ms of every
        # command's start, near a tenth of a no-change pass over a small tree.
        return os.path.join(os.path.dirname(self.config_path), path) or "."  # "" with no config.py: here

    def state_path(self) -> str:
        """Where clean-pass records are kept: STATE_DIR (relative: to config.py's directory), else
        ``$CMOVER_STATE_DIR``, else ``~/.local/state/cmover``."""
        if not self.state_dir:
            return os.environ.get("CMOVER_STATE_DIR") or os.path.join(os.path.expanduser("~"), ".local", "state",
                                                                       "cmover")
        return self._beside_config(self.state_dir)

    def changelog_user(self, device: str) -> str | None:
        """The changelog user registered for cmover on MDT ``device`` (``FSNAME-MDTxxxx``), or None."""
        return dict(self.changelog_users).get(device)

    def replace(self, **changes: Any) -> Settings:
        """These settings with ``changes`` (field name -> value); TypeError for a name that is not a field."""
        unknown = changes.keys() - self._fields
        if unknown:
            raise TypeError(f"Settings has no field(s) {', '.join(sorted(unknown))}")
        return self._replace(**changes)


#: The config.py of the source tree the package runs from (a checkout installed with ``pip install -e``).
PACKAGE_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))),
                              "config.py")  # cmover/core/settings.py -> the checkout


def config_candidates(explicit: str | None = None) -> list[tuple[str, str]]:
    """Where config.py is looked for, in order, each with how it was named (see the module doc).

    ``--config FILE`` (``explicit``) or ``$CMOVER_CONFIG`` alone when given (they must exist);
    otherwise ``./config.py`` in the current directory, then the ``config.py`` beside the package.
    """
    if explicit:
        return [(explicit, "named by --config")]
    env = os.environ.get("CMOVER_CONFIG")
    if env:
        return [(env, "named by $CMOVER_CONFIG")]
    return [(os.path.join(os.getcwd(), "config.py"), "in the current directory"),
            (PACKAGE_CONFIG, "beside the cmover package")]


def locate_config(explicit: str | None = None) -> tuple[str | None, str]:
    """The config file to read and how it was found, or ``(None, where_looked)`` when there is none.

    ConfigError when a file named by ``--config`` or ``$CMOVER_CONFIG`` does not exist: naming a file
    is never the same as having none.
    """
    candidates = config_candidates(explicit)
    for path, how in candidates:
        if os.path.isfile(path):
            return os.path.realpath(path), how
    if explicit:
        raise ConfigError(f"config file {explicit} not found; pass an existing file with --config or CMOVER_CONFIG")
    env = os.environ.get("CMOVER_CONFIG")
    if env:
        raise ConfigError(f"CMOVER_CONFIG={env} does not name a file; point it at your config.py")
    return None, ", then ".join(p for p, _ in candidates)


def find_config(explicit: str | None = None) -> str:
    """Locate config.py (see :func:`locate_config`); ConfigError when there is none."""
    path, where = locate_config(explicit)
    if path is None:
        raise ConfigError(f"no config.py found (looked for {where}); run from the cmover directory, "
                          "set CMOVER_CONFIG or pass --config")
    return path


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


def from_mapping(values: dict[str, Any], *, config_path: str = "", rabbitmq_dir: str = "",
                 config_origin: str = "") -> Settings:
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
    for name in ("MIN_SIZE", "MAX_SIZE"):
        fname = _SCHEMA[name][0]
        try:
            kw[fname] = parse_size(kw[fname])
        except ValueError as exc:
            raise ConfigError(f"{name} = {_show(kw[fname])} {exc}; fix config.py") from None
    check_sizes(kw["min_size"], kw["max_size"], "MIN_SIZE", "MAX_SIZE", "fix config.py")
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
        raise ConfigError(f"LOCAL_JOBS must be between 0 and {MAX_LOCAL_JOBS} processes (0 = one per core, "
                          "two on a network filesystem); fix config.py")
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
    if kw["hsm_policy"] not in HSM_POLICIES:
        raise ConfigError(f"HSM_POLICY = {_show(kw['hsm_policy'])} must be one of {', '.join(HSM_POLICIES)}; "
                          "fix config.py")
    if kw["log_format"] not in LOG_FORMATS:
        raise ConfigError(f"LOG_FORMAT = {_show(kw['log_format'])} must be \"text\" or \"json\" (one JSON object per "
                          "line); fix config.py")
    if not kw["graphite_host"] or any(c.isspace() or c == "/" for c in kw["graphite_host"]):
        raise ConfigError(f"GRAPHITE_HOST = {_show(kw['graphite_host'])} must be a host name or address (no spaces, "
                          "no URL); fix config.py")
    if not 1 <= kw["graphite_port"] <= 65535:
        raise ConfigError(f"GRAPHITE_PORT = {kw['graphite_port']} must be a TCP port (1-65535; carbon's plaintext "
                          "port is 2003 by default); fix config.py")
    if not GRAPHITE_PREFIX_RE.fullmatch(kw["graphite_prefix"]):
        raise ConfigError(f"GRAPHITE_PREFIX = {_show(kw['graphite_prefix'])} must be dot-separated words of letters, "
                          "digits, '_' and '-' (e.g. \"cmover\" or \"site.cmover\"); fix config.py")
    if not 0 <= kw["clock_skew"] <= 86400:
        raise ConfigError(f"CLOCK_SKEW = {kw['clock_skew']!r} must be between 0 and 86400 seconds; fix config.py")
    for name in ("source_mount", "target_mount"):
        v = kw[name]
        if v and not os.path.isabs(v):
            raise ConfigError(f"{name} = {_show(v)} must be an absolute path; fix config.py")
        kw[name] = os.path.normpath(v) if v else ""
    for name in ("UID_MAP", "GID_MAP"):  # a mapping file named there is relative to config.py's directory
        fname = _SCHEMA[name][0]
        kw[fname] = from_config(kw[fname], name, os.path.dirname(config_path))
    kw["changelog_users"] = _changelog_users(kw["changelog_users"])
    src, dst = kw["source_mount"], kw["target_mount"]
    if src and dst and (_inside(src, dst) or _inside(dst, src)):
        # Workers confine every message to these trees: nested, a message could write into the source.
        raise ConfigError(f"source_mount = {_show(src)} and target_mount = {_show(dst)} overlap; they must be "
                          "separate trees (neither inside the other); fix config.py")
    return Settings(**kw, config_path=config_path, rabbitmq_dir=rabbitmq_dir, config_origin=config_origin)


_MDT_DEVICE_RE = re.compile(r"[A-Za-z0-9_]{1,8}-MDT[0-9a-f]{4}")
_CHANGELOG_USER_RE = re.compile(r"cl[1-9][0-9]{0,9}(-[A-Za-z][A-Za-z0-9_-]{0,14})?")


def _changelog_users(users: dict[Any, Any]) -> tuple[tuple[str, str], ...]:
    """CHANGELOG_USERS: ``{"FSNAME-MDTxxxx": "clN", ...}`` as sorted pairs; ConfigError naming the bad entry."""
    for dev, user in users.items():
        if not isinstance(dev, str) or not _MDT_DEVICE_RE.fullmatch(dev):
            raise ConfigError(f"CHANGELOG_USERS key {_show(dev)} must be an MDT device name FSNAME-MDTxxxx (4 "
                              "lower-case hex digits, e.g. \"lustre-MDT0000\"); fix config.py")
        if not isinstance(user, str) or not _CHANGELOG_USER_RE.fullmatch(user):
            raise ConfigError(f"CHANGELOG_USERS[{dev!r}] = {_show(user)} must be a changelog user id as "
                              "changelog_register printed it (\"cl1\" or \"cl1-name\"); fix config.py")
    return tuple(sorted(users.items()))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


MAX_AGE = 10**11  # seconds (some 3000 years): more is a typo, and overflows the nanosecond cutoffs
MAX_LOCAL_JOBS = 1024  # processes of an embedded run


def read_broker_host(rabbitmq_dir: str | os.PathLike[str]) -> str | None:
    """The broker host from ``rabbitmq.conf`` (first non-comment line), or None when the file is absent."""
    conf = os.path.join(rabbitmq_dir, "rabbitmq.conf")
    try:
        with open(conf) as f:
            text = f.read()
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


def run_config(path: str) -> dict[str, Any]:
    """The names config file ``path`` defines, run as Python runs a script (``__name__`` is not
    ``"__main__"``; ``__file__`` is its path): what :func:`runpy.run_path` does for a file, without the 3 ms
    its import (and pkgutil's) adds to every command. Raises what the file raises (SyntaxError included)."""
    with open(path, "rb") as f:  # bytes: compile() honours a coding declaration, as for any script
        source = f.read()
    namespace: dict[str, Any] = {"__name__": "<config>", "__file__": path}
    exec(compile(source, path, "exec"), namespace)
    return namespace


def load_settings(path: str | None = None, *, required: bool = True) -> Settings:
    """Find, read and validate config.py and the broker host file; raise ConfigError on any problem.

    A config file that is found is always read and validated, whatever ``required`` says. Only when
    none exists at all (and none was named) does ``required=False`` give the defaults, with an empty
    ``config_path`` (the embedded commands need no file).
    """
    cfg, how = locate_config(path)
    if cfg is None:
        if required:
            find_config(path)  # raises the one-line "no config.py found" error
        return from_mapping({}, config_origin=f"looked for {how}")
    try:
        values = run_config(cfg)
    except (Exception, SystemExit) as exc:  # a syntax error or an exit() in config.py: a one-line message
        why = _show_exc(exc)
        raise ConfigError(f"cannot load {cfg}: {type(exc).__name__}: {why}; fix the file") from None
    # Imported modules (e.g. "import os" for a computed path) are not settings.
    values = {k: v for k, v in values.items() if not k.startswith("__") and not isinstance(v, types.ModuleType)}
    rabbitmq_dir = os.environ.get("CMOVER_RABBITMQ_DIR") or os.path.join(os.path.dirname(cfg), "rabbitmq")
    try:
        s = from_mapping(values, config_path=cfg, rabbitmq_dir=rabbitmq_dir, config_origin=how)
    except ConfigError as exc:  # name the file: the one found may not be the one the operator edited
        raise ConfigError(f"{cfg}: {exc}") from None
    return s.replace(broker_host=read_broker_host(rabbitmq_dir))
