"""Multipart form parsing that says which limit a too-large request broke.

Werkzeug answers three different excesses with the same RequestEntityTooLarge: the whole body
over MAX_CONTENT_LENGTH (MAX_UPLOAD_MB), one form field over MAX_FORM_MEMORY_SIZE, and more
parts than MAX_FORM_PARTS. The parser here tells the last two apart from the first
(:class:`FieldTooLarge`, :class:`TooManyParts`), naming the field, so the 413 names the limit
that was really exceeded (rapl.http.envelopes). Uploaded files stay in memory (:class:`InMemoryRequest`).
"""

from __future__ import annotations

import io
import re
from typing import IO, Any

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from ..core.params import MAX_REFERENCE_BYTES

# The largest form field: a known_speaker_references data URL of MAX_REFERENCE_BYTES (base64 is 4/3 of
# the bytes) and its ``data:audio/...;base64,`` head. Every other field is far smaller.
MAX_FIELD_BYTES = 4 * -(-MAX_REFERENCE_BYTES // 3) + 1024
# A part's header line: where its field name is. Searched only just after each boundary (found with
# bytes.find: a regex over every byte of a 300 KB upload cost 3 ms a request), with some overlap.
_PART_NAME = re.compile(rb'content-disposition:[^\r\n]*?\bname="([^"\r\n]{0,200})"', re.IGNORECASE)
_HEADER_SPAN = 1024  # bytes after a boundary searched for the part's name


class FieldTooLarge(RequestEntityTooLarge):
    """One form field is larger than MAX_FORM_MEMORY_SIZE (the body itself may be within its limit)."""

    def __init__(self, field: str | None, limit: int) -> None:
        super().__init__()
        self.field = field
        self.limit = limit


class TooManyParts(RequestEntityTooLarge):
    """The form has more parts than MAX_FORM_PARTS."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit


class _PartWatch:
    """A read-only stream that passes the body through, noting the name of each part it starts."""

    def __init__(self, stream: IO[bytes], boundary: bytes) -> None:
        self._stream = stream
        self._marker = b"--" + boundary
        self._overlap = _HEADER_SPAN + len(self._marker)  # bytes of the last read kept: a header split
        self._tail = b""  # between two reads is found in the next
        self.name: str | None = None  # the part being read
        self.parts = 0
        self.body_exceeded = False  # the stream itself refused (MAX_CONTENT_LENGTH)

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the body."""
        try:
            data = self._stream.read(size)
        except RequestEntityTooLarge:
            self.body_exceeded = True
            raise
        window = self._tail + data
        at = window.find(self._marker)
        while at >= 0:
            match = _PART_NAME.search(window, at, at + self._overlap)
            if match and match.end() > len(self._tail):  # not counted in the last read
                self.parts += 1
                self.name = match.group(1).decode("utf-8", "replace")
            at = window.find(self._marker, at + 1)
        self._tail = window[-self._overlap:]
        return data


class FormParser(FormDataParser):
    """Werkzeug's form parser, raising FieldTooLarge or TooManyParts for what they name."""

    def _parse_multipart(self, stream: IO[bytes], mimetype: str, content_length: int | None,
                         options: dict[str, str]) -> Any:
        watch = _PartWatch(stream, options.get("boundary", "").encode("latin-1", "replace"))
        try:
            return super()._parse_multipart(watch, mimetype, content_length, options)  # type: ignore[arg-type]
        except RequestEntityTooLarge:
            if watch.body_exceeded:
                raise
            if self.max_form_parts is not None and watch.parts > self.max_form_parts:
                raise TooManyParts(self.max_form_parts) from None
            if self.max_form_memory_size is not None:
                raise FieldTooLarge(watch.name, self.max_form_memory_size) from None
            raise


class InMemoryRequest(Request):
    """Keeps uploaded files in memory: no temporary files, whatever their size. A too-large form
    field or too many parts raise rapl.http.forms' own 413s, which name the limit they broke."""

    form_data_parser_class = FormParser

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        return io.BytesIO()
