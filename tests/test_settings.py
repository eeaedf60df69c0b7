"""cmover.core.settings: defaults, validation of config.py, broker host and password files."""

import os
import urllib.parse
from pathlib import Path

import pytest

from cmover.core.errors import ConfigError
from cmover.core.settings import Settings, from_mapping, load_settings, read_broker_host


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("CMOVER_CONFIG", raising=False)
    monkeypatch.delenv("CMOVER_RABBITMQ_DIR", raising=False)


def write_config(tmp_path: Path, text: str = "", *, host: str | None = None, password: str | None = None,
                 username: str = "cmover") -> Path:
    """config.py in tmp_path/site, with rabbitmq/rabbitmq.conf and the password file when given."""
    site = tmp_path / "site"
    (site / "rabbitmq").mkdir(parents=True, exist_ok=True)
    cfg = site / "config.py"
    cfg.write_text(text)
    if host is not None:
        (site / "rabbitmq" / "rabbitmq.conf").write_text(host)
    if password is not None:
        (site / "rabbitmq" / f"rabbitmq_{username}.conf").write_text(password)
    return cfg


def test_defaults_from_empty_config(tmp_path):
    cfg = write_config(tmp_path)
    s = load_settings(str(cfg))
    assert s.username == "cmover"
    assert (s.oldest_date, s.newest_date) == (0, 0)
    assert s.batch == 1000 and s.inline_entries == 10000 and s.inline_seconds == 0.5
    assert s.mdt_list == () and s.max_deliveries == 5 and s.local_jobs == 0
    assert s.stats_enabled is True and s.mds_is_striped is True
    assert (s.lustre_layout, s.lustre_restripe, s.lustreapi) == ("keep", False, "")
    assert s.source_mount == "" and s.target_mount == "" and s.exclude_file == ""
    assert s.memcached == "127.0.0.1:11211"
    assert s.config_path == str(cfg.resolve())
    assert Path(s.rabbitmq_dir) == cfg.resolve().parent / "rabbitmq"
    assert s.broker_host is None and not s.broker_configured
    assert s.log_path() == str(cfg.resolve().parent / "var/log")


def test_directories_are_taken_from_the_config_files_directory(tmp_path):
    """LOG_DIR, CHANGES_DIR and STATE_DIR: absolute as given, relative from config.py's directory (empty: that
    directory), and from the current directory when there is no config.py at all."""
    cfg = write_config(tmp_path, 'LOG_DIR = ""\nCHANGES_DIR = "/srv/changes"\nSTATE_DIR = "state"\n')
    s = load_settings(str(cfg))
    here = cfg.resolve().parent
    assert os.path.realpath(s.log_path()) == str(here) and s.changes_path() == "/srv/changes"
    assert s.state_path() == str(here / "state")
    bare = from_mapping({"LOG_DIR": "", "CHANGES_DIR": "c"})
    assert (bare.log_path(), bare.changes_path()) == (".", "c")


def test_values_are_read(tmp_path):
    cfg = write_config(tmp_path, 'USERNAME = "mover_2.x"\nBATCH = 17\nOLDEST_DATE = 86400.5\nMDT_LIST = [3, 1]\n'
                                 'source_mount = "/mnt/src/"\ntarget_mount = "/mnt//dst"\nMDS_IS_STRIPED = False\n')
    s = load_settings(str(cfg))
    assert (s.username, s.batch, s.oldest_date, s.mdt_list) == ("mover_2.x", 17, 86400.5, (3, 1))
    assert (s.source_mount, s.target_mount) == ("/mnt/src", "/mnt/dst")
    assert s.mds_is_striped is False


def test_settings_are_frozen(tmp_path):
    s = load_settings(str(write_config(tmp_path)))
    with pytest.raises(AttributeError):
        s.batch = 5  # type: ignore[misc]


def test_unknown_setting_named(tmp_path):
    cfg = write_config(tmp_path, "BATCH = 10\nBACTH_SIZE = 10\nsource_mnt = '/x'\n")
    with pytest.raises(ConfigError) as ei:
        load_settings(str(cfg))
    assert "BACTH_SIZE" in str(ei.value) and "source_mnt" in str(ei.value)


def test_private_names_and_module_imports_ignored(tmp_path):
    cfg = write_config(tmp_path, "import os\nimport os.path as osp\n_base = '/mnt'\n"
                                 "source_mount = os.path.join(_base, 'src')\n")
    assert load_settings(str(cfg)).source_mount == "/mnt/src"


@pytest.mark.parametrize("values, word", [
    ({"BATCH": True}, "BATCH"),
    ({"BATCH": "10"}, "BATCH"),
    ({"BATCH": 10.0}, "BATCH"),
    ({"INLINE_ENTRIES": False}, "INLINE_ENTRIES"),
    ({"OLDEST_DATE": True}, "OLDEST_DATE"),
    ({"OLDEST_DATE": "30"}, "OLDEST_DATE"),
    ({"STATS_ENABLED": 1}, "STATS_ENABLED"),
    ({"USERNAME": 5}, "USERNAME"),
    ({"MDT_LIST": (0, 1)}, "MDT_LIST"),
    ({"MDT_LIST": [-1, 0]}, "MDT_LIST"),
    ({"LUSTRE_LAYOUT": "stripe"}, "LUSTRE_LAYOUT"),
    ({"LUSTRE_LAYOUT": 1}, "LUSTRE_LAYOUT"),
    ({"LUSTRE_RESTRIPE": "yes"}, "LUSTRE_RESTRIPE"),
    ({"MDT_LIST": [0, True]}, "MDT_LIST"),
    ({"MDT_LIST": [-2]}, "MDT_LIST"),
    ({"BATCH": 0}, "BATCH"),
    ({"BATCH": 100_001}, "BATCH"),
    ({"NEWEST_DATE": -1}, "NEWEST_DATE"),
    ({"MAX_DELIVERIES": 0}, "MAX_DELIVERIES"),
    ({"LOCAL_JOBS": -1}, "LOCAL_JOBS"),
    ({"REPORT_INTERVAL": 0}, "REPORT_INTERVAL"),
    ({"INLINE_SECONDS": -0.1}, "INLINE_SECONDS"),
    ({"CHANGELOG_USERS": [("lustre-MDT0000", "cl1")]}, "CHANGELOG_USERS"),
    ({"CHANGELOG_USERS": {"lustre-MDT0": "cl1"}}, "FSNAME-MDTxxxx"),
    ({"CHANGELOG_USERS": {"lustre-MDT000A": "cl1"}}, "FSNAME-MDTxxxx"),
    ({"CHANGELOG_USERS": {"lustre-MDT0000": "1"}}, "changelog user id"),
    ({"CHANGELOG_USERS": {"lustre-MDT0000": "cl0"}}, "changelog user id"),
    ({"CHANGELOG_USERS": {"lustre-MDT0000": 1}}, "changelog user id"),
])
def test_bad_values_rejected(values, word):
    with pytest.raises(ConfigError) as ei:
        from_mapping(values)
    assert word in str(ei.value)


def test_changelog_users_read_as_sorted_pairs():
    s = from_mapping({"CHANGELOG_USERS": {"fs1-MDT0001": "cl2-cmover", "fs1-MDT0000": "cl1"}})
    assert s.changelog_users == (("fs1-MDT0000", "cl1"), ("fs1-MDT0001", "cl2-cmover"))
    assert s.changelog_user("fs1-MDT0001") == "cl2-cmover" and s.changelog_user("fs1-MDT0002") is None


@pytest.mark.parametrize("name", ["", "a b", "a/b", "a:b", "a@b", "x" * 65, "caf\u00e9", "a\nb", "../x"])
def test_bad_username(name):
    with pytest.raises(ConfigError, match="USERNAME"):
        from_mapping({"USERNAME": name})


def test_username_with_trailing_newline_rejected():
    with pytest.raises(ConfigError, match="USERNAME"):
        from_mapping({"USERNAME": "cmover\n"})


@pytest.mark.parametrize("name", ["a", "A-b_c.d", "x" * 64])
def test_good_username(name):
    assert from_mapping({"USERNAME": name}).username == name


@pytest.mark.parametrize("key", ["source_mount", "target_mount"])
def test_relative_mount_rejected(key):
    with pytest.raises(ConfigError, match=key):
        from_mapping({key: "mnt/src"})


def test_syntax_error_becomes_config_error(tmp_path):
    cfg = write_config(tmp_path, "BATCH = = 3\n")
    with pytest.raises(ConfigError, match="cannot load"):
        load_settings(str(cfg))


def test_explicit_missing_config(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(str(tmp_path / "nope.py"))


def test_cmover_config_env_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CMOVER_CONFIG", str(tmp_path / "missing.py"))
    with pytest.raises(ConfigError) as ei:
        load_settings()
    assert "CMOVER_CONFIG" in str(ei.value) and "missing.py" in str(ei.value)


def test_cmover_config_env_used(tmp_path, monkeypatch):
    cfg = write_config(tmp_path, "BATCH = 3\n")
    monkeypatch.setenv("CMOVER_CONFIG", str(cfg))
    monkeypatch.chdir(tmp_path)
    assert load_settings().batch == 3


def test_config_in_cwd_used(tmp_path, monkeypatch):
    (tmp_path / "config.py").write_text("BATCH = 4\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings().batch == 4


# -- broker host file ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, host", [
    ("broker.example.org\n", "broker.example.org"),
    ("# the broker\n\n   \nbroker:5673  # port\nignored\n", "broker:5673"),
    ("  10.0.0.1  \n", "10.0.0.1"),
    ("[::1]:5672\n", "[::1]:5672"),
    ("# only comments\n\n", None),
    ("", None),
])
def test_read_broker_host(tmp_path, text, host):
    (tmp_path / "rabbitmq.conf").write_text(text)
    assert read_broker_host(tmp_path) == host


def test_read_broker_host_absent(tmp_path):
    assert read_broker_host(tmp_path) is None


@pytest.mark.parametrize("text", ["amqp://host\n", "user@host\n", "host other\n", "host\tport\n", "a/b\n"])
def test_read_broker_host_junk(tmp_path, text):
    (tmp_path / "rabbitmq.conf").write_text(text)
    with pytest.raises(ConfigError, match="rabbitmq.conf"):
        read_broker_host(tmp_path)


def test_broker_url_quoting(tmp_path):
    pw = "p@ss/w:rd%#?&+ "
    cfg = write_config(tmp_path, 'USERNAME = "ops.user"\n', host="broker.example.org\n",
                       password=pw + "\n", username="ops.user")
    s = load_settings(str(cfg))
    assert s.broker_configured and s.broker_host == "broker.example.org"
    url = s.broker_url()
    assert url == f"amqp://ops.user:{urllib.parse.quote(pw.strip(), safe='')}@broker.example.org:5672/ops.user"
    parsed = urllib.parse.urlsplit(url)
    assert urllib.parse.unquote(parsed.password) == pw.strip()
    assert parsed.hostname == "broker.example.org" and parsed.port == 5672


def test_a_command_connects_with_the_login_the_url_carries(tmp_path):
    """What a command connects with (the login, no URL built and parsed again) is what Celery's URL says."""
    from cmover.state.taskmessages import Link

    pw = "p@ss/w:rd%#?&+ "
    cfg = write_config(tmp_path, 'USERNAME = "ops.user"\n', host="broker.example.org:5673\n",
                       password=pw + "\n", username="ops.user")
    s = load_settings(str(cfg))
    assert s.broker_login() == ("broker.example.org:5673", "ops.user", pw.strip(), "ops.user")
    assert Link(login=s.broker_login())._params == Link(s.broker_url())._params
    for host in ("[::1]", "[::1]:5673"):
        v6 = Settings(broker_host=host, rabbitmq_dir=s.rabbitmq_dir, username="ops.user")
        assert Link(login=v6.broker_login())._params == Link(v6.broker_url())._params


def test_broker_url_keeps_port(tmp_path):
    cfg = write_config(tmp_path, host="10.1.2.3:5673\n", password="secret")
    assert load_settings(str(cfg)).broker_url() == "amqp://cmover:secret@10.1.2.3:5673/cmover"


@pytest.mark.parametrize("host, netloc", [("[::1]", "[::1]:5672"), ("[::1]:5673", "[::1]:5673")])
def test_broker_url_ipv6(tmp_path, host, netloc):
    (tmp_path / "rabbitmq_cmover.conf").write_text("pw")
    s = Settings(broker_host=host, rabbitmq_dir=str(tmp_path))
    assert s.broker_url() == f"amqp://cmover:pw@{netloc}/cmover"


def test_missing_password_file(tmp_path):
    cfg = write_config(tmp_path, host="localhost\n")
    s = load_settings(str(cfg))
    with pytest.raises(ConfigError) as ei:
        s.broker_url()
    msg = str(ei.value)
    assert "rabbitmq_init.sh" in msg and "rabbitmq_cmover.conf" in msg


@pytest.mark.parametrize("content", ["", "\n", "   \n"])
def test_empty_password(tmp_path, content):
    cfg = write_config(tmp_path, host="localhost\n", password=content)
    with pytest.raises(ConfigError, match="empty"):
        load_settings(str(cfg)).broker_url()


def test_unreadable_password_file(tmp_path):
    cfg = write_config(tmp_path, host="localhost\n")
    (cfg.parent / "rabbitmq" / "rabbitmq_cmover.conf").mkdir()  # EISDIR even for root
    with pytest.raises(ConfigError, match="cannot read password file"):
        load_settings(str(cfg)).broker_url()


def test_broker_url_without_broker(tmp_path):
    s = load_settings(str(write_config(tmp_path)))
    with pytest.raises(ConfigError, match="rabbitmq.conf"):
        s.broker_url()


def test_rabbitmq_dir_env_override(tmp_path, monkeypatch):
    cfg = write_config(tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "rabbitmq.conf").write_text("otherhost\n")
    monkeypatch.setenv("CMOVER_RABBITMQ_DIR", str(other))
    s = load_settings(str(cfg))
    assert s.broker_host == "otherhost" and Path(s.rabbitmq_dir) == other
