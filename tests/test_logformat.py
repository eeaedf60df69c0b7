"""cmover.core.logformat: one JSON object per record, on one ASCII line, with the pass, run and path it is about."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator

import pytest

from cmover.core import logformat
from cmover.core.errors import ConfigError
from cmover.core.settings import from_mapping

FIELDS = ["time", "level", "node", "pass", "run", "path", "message", "logger", "pid"]


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    logformat.clear_task()  # a task run in this process before (in-process task tests) leaves its context
    out = io.StringIO()
    logger = logging.getLogger("cmover.test.logformat")
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logformat.apply("json", logger)
    yield logger, out
    logger.removeHandler(handler)
    logformat.clear_task()


def lines(out: io.StringIO) -> list[dict]:
    text = out.getvalue()
    assert text.isascii()
    return [json.loads(line) for line in text.splitlines()]


def test_fields_outside_a_task(capture):
    logger, out = capture
    logger.warning("memcached away: %s", "refused")
    (rec,) = lines(out)
    assert list(rec) == FIELDS
    assert (rec["level"], rec["pass"], rec["run"], rec["path"], rec["message"], rec["logger"]) == \
        ("WARNING", None, None, None, "memcached away: refused", "cmover.test.logformat")
    assert rec["time"].endswith("Z") and len(rec["time"]) == len("2026-01-02T03:04:05.123456Z")


def test_a_task_and_an_explicit_path(capture):
    logger, out = capture
    logformat.bind_task("copy", "copy-1", b"dir-\xff")
    logger.info("inside the task")
    logger.warning("one entry", extra=logformat.at(b"dir-\xff/caf\xe9\nx"))
    logger.info("a UTF-8 entry", extra=logformat.at("d/é".encode()))
    logformat.bind_task("delete", "delete-2", b"")
    logger.info("the root")
    logformat.clear_task()
    logger.info("after")
    recs = lines(out)
    assert [(r["pass"], r["run"]) for r in recs] == [("copy", "copy-1")] * 3 + [("delete", "delete-2"), (None, None)]
    assert recs[0]["path"] == {"b64": base64.b64encode(b"dir-\xff").decode()}
    assert base64.b64decode(recs[1]["path"]["b64"]) == b"dir-\xff/caf\xe9\nx"  # exact bytes, newline included
    assert recs[2]["path"] == "d/é" and recs[3]["path"] == "" and recs[4]["path"] is None


def test_multi_line_messages_tracebacks_and_surrogates_stay_one_line(capture):
    logger, out = capture
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    logger.error("first\nsecond %s", name)
    try:
        raise OSError(2, "No such file", name)
    except OSError:
        logger.exception("failed")
    logger.info("lone \ud800 surrogate")
    recs = lines(out)
    assert len(recs) == 3
    assert recs[0]["message"] == "first\nsecond caf\\xe9"  # the byte's escape, never a lone surrogate
    assert recs[1]["message"] == "failed" and "Traceback" in recs[1]["exception"]
    assert "OSError" in recs[1]["exception"] and "\\udce9" in recs[1]["exception"]  # repr() of the name
    assert recs[2]["message"] == "lone \\ud800 surrogate"
    for r in recs:  # valid Unicode everywhere: a strict consumer takes every line
        json.dumps(r, ensure_ascii=False).encode("utf-8")


def test_text_keeps_the_handlers_format(capture):
    logger, _ = capture
    handler = logging.StreamHandler(io.StringIO())
    fmt = logging.Formatter("%(message)s")
    handler.setFormatter(fmt)
    other = logging.getLogger("cmover.test.logformat.text")
    other.addHandler(handler)
    logformat.apply("text", other)
    assert handler.formatter is fmt
    other.removeHandler(handler)


def test_log_format_setting():
    assert from_mapping({}).log_format == "text"
    assert from_mapping({"LOG_FORMAT": "json"}).log_format == "json"
    for bad in ("JSON", "yaml", 1, ""):
        with pytest.raises(ConfigError, match="LOG_FORMAT"):
            from_mapping({"LOG_FORMAT": bad})
