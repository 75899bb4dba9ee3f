"""HTTP and WebSocket: everything a client touches, and nothing a model does.

The Flask blueprint (``api``: transcriptions, translations, models, health), form parsing with
limits that name themselves (``forms``), errors as OpenAI envelopes (``envelopes``), the headers on
every answer, auth, CORS and Host checks, the web page and its static files, the OpenAPI document,
Prometheus metrics, the waitress server RAPL builds (``server``), and live dictation: the Realtime
WebSocket endpoint (``websocket``), its sessions (``live``) and their ``session.update`` (``live_config``).
May import rapl.core, rapl.backends, rapl.audio, rapl.transcript and the foundation (rapl.settings,
rapl.errors, rapl.catalog, rapl.logs); nothing below imports it.
"""
