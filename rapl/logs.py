"""RAPL's log lines: a timestamped format and client text escaped, set by the entry points (never create_app)."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _EscapingFilter(logging.Filter):
    """On a handler: control characters in each record's message written as escapes, so client text
    cannot forge log lines, whichever formatter then writes it (tracebacks keep their lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Escape the message in place; never drops a record."""
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: the handler reports it as logging does
            return True
        if not message.isprintable():
            record.msg, record.args = message.translate(_ESCAPES), ()
        return True


# C0 and C1 control characters (CR, LF, NEL, ESC...), DEL and the Unicode line and paragraph separators.
_ESCAPES = {code: f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"
            for code in [*range(32), *range(127, 160), 0x2028, 0x2029]}


def configure_logging(level: str) -> None:
    """Log to stderr with timestamps, control characters escaped (entry points call this, not create_app).

    Under `waitress-serve`, waitress's serve() has already called ``logging.basicConfig()``: its bare
    handler gets RAPL's format too, so waitress's own lines are timestamped. A handler with a format
    of its own keeps it, but escapes client text as well.
    """
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        if _bare(handler.formatter):
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
        if not any(isinstance(f, _EscapingFilter) for f in handler.filters):
            handler.addFilter(_EscapingFilter())
    logging.getLogger("rapl").setLevel(level)


def _bare(formatter: logging.Formatter | None) -> bool:
    """No format chosen: logging's default, or the one ``logging.basicConfig()`` sets."""
    return formatter is None or getattr(formatter, "_fmt", None) in (None, "%(message)s", logging.BASIC_FORMAT)
