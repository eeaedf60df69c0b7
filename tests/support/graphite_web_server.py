"""Serve graphite-web on 127.0.0.1 for the tests: ``/usr/bin/python3 tests/support/graphite_web_server.py WORKDIR``.

Run by :class:`support.metric_readers.GraphiteWeb` with the system's Python, where the Debian package graphite-web
lives. WORKDIR holds ``cmover_graphite_settings.py`` (graphite-web's local settings: whisper directory,
SQLite database, logs). The database is migrated, then the package's WSGI application is served by a
threaded WSGI server on a free port; one line ``serving http://127.0.0.1:PORT/`` on stdout says it is ready.
Requests are logged on stderr. Stops on SIGTERM.
"""

import os
import signal
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def main() -> None:
    workdir = sys.argv[1]
    sys.path.insert(0, workdir)
    os.environ["GRAPHITE_SETTINGS_MODULE"] = "cmover_graphite_settings"
    os.environ["DJANGO_SETTINGS_MODULE"] = "graphite.settings"
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", interactive=False, verbosity=0)
    from graphite.wsgi import application

    httpd = make_server("127.0.0.1", 0, application, server_class=ThreadingServer, handler_class=WSGIRequestHandler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"serving http://127.0.0.1:{httpd.server_port}/", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
