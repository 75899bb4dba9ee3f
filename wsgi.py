"""WSGI entry point: `waitress-serve wsgi:app` serves it as `python -m rapl` does (rapl/http/server.py).

Under waitress-serve, RAPL listens on HOST:PORT from the settings (flags such as --listen win),
with its own waitress adjustments and a graceful stop on SIGINT/SIGTERM; other WSGI servers just
get ``app``.
"""
from rapl import create_app_or_exit
from rapl.http.server import adopt_waitress_serve

adopt_waitress_serve()  # only when waitress-serve is importing this module; binds the port first
app = create_app_or_exit()
