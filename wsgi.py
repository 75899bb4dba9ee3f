"""WSGI entry point: `waitress-serve --listen=127.0.0.1:8000 wsgi:app`."""
from rapl import create_app_or_exit

app = create_app_or_exit()
