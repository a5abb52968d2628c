"""Stream request bodies straight into upload staging files (never holding a file in memory).

``parse_form`` parses ``multipart/form-data`` incrementally: each file part goes chunk by chunk into
an ``UploadWriter`` (sha256 + size limit per field), text fields are kept (1 MiB at most each).
``read_body`` does the same for a raw ``application/octet-stream`` body. The size limit is enforced
while streaming (``413`` as soon as it is passed) and up front from ``Content-Length``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from worker.core.storage import ArtifactStore, UploadWriter
from worker.errors import MalformedUploadError, PayloadTooLargeError, UnsupportedMediaTypeError

log = logging.getLogger(__name__)

MAX_TEXT_FIELD = 1024 * 1024
MAX_PARTS = 32


@dataclass
class Form:
    """A parsed form: text fields and file parts (staged, not yet committed)."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadWriter] = field(default_factory=dict)
    filenames: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        for w in self.files.values():
            w.discard()


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def check_content_length(request: Request, limit: int) -> None:
    raw = request.headers.get("content-length")
    if raw and raw.isdigit() and int(raw) > limit:
        raise PayloadTooLargeError(
            f"the request body ({raw} bytes) is larger than the limit of {limit} bytes"
        )


async def read_body(request: Request, store: ArtifactStore, limit: int, what: str) -> UploadWriter:
    """Stream a raw request body into a staging file."""
    check_content_length(request, limit)
    writer = store.new_upload(limit, what)
    try:
        async for chunk in request.stream():
            if chunk:
                await anyio.to_thread.run_sync(writer.write, chunk)
        writer.close()
    except ClientDisconnect as e:
        writer.discard()
        raise MalformedUploadError("the client disconnected during the upload") from e
    except BaseException:
        writer.discard()
        raise
    if writer.size == 0:
        writer.discard()
        raise MalformedUploadError(f"the {what} is empty")
    return writer


async def parse_form(
    request: Request,
    store: ArtifactStore,
    file_limit: Callable[[str], int | None],
    total_limit: int,
) -> Form:
    """Parse ``multipart/form-data``; ``file_limit(field)`` gives a file field's size limit, or
    None when that field may not carry a file."""
    if content_type(request) != "multipart/form-data":
        raise UnsupportedMediaTypeError("expected multipart/form-data")
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise MalformedUploadError("multipart/form-data without a boundary")
    check_content_length(request, total_limit)

    form = Form()
    state: dict[str, object] = {}
    pending: list[tuple[UploadWriter, bytes]] = []
    text = bytearray()
    header_name = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}
    parts = 0

    def on_part_begin() -> None:
        nonlocal parts
        parts += 1
        if parts > MAX_PARTS:
            raise MalformedUploadError(f"too many parts (at most {MAX_PARTS})")
        headers.clear()
        text.clear()
        state.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, opts = parse_options_header(headers.get(b"content-disposition", b""))
        if b"name" not in opts:
            raise MalformedUploadError('a part has no Content-Disposition "name"')
        name = opts[b"name"].decode("utf-8", "replace")
        if name in form.fields or name in form.files:
            raise MalformedUploadError(f"field {name!r} is given twice")
        state["name"] = name
        if b"filename" in opts:
            limit = file_limit(name)
            if limit is None:
                raise MalformedUploadError(f"unexpected file field {name!r}")
            form.files[name] = store.new_upload(limit, f"file {name!r}")
            form.filenames[name] = opts[b"filename"].decode("utf-8", "replace")
            state["writer"] = form.files[name]

    def on_part_data(data: bytes, start: int, end: int) -> None:
        writer = state.get("writer")
        if isinstance(writer, UploadWriter):
            pending.append((writer, data[start:end]))
        else:
            text.extend(data[start:end])
            if len(text) > MAX_TEXT_FIELD:
                raise MalformedUploadError(
                    f"field {state.get('name')!r} is longer than {MAX_TEXT_FIELD} bytes"
                )

    def on_part_end() -> None:
        if "writer" not in state and "name" in state:
            form.fields[str(state["name"])] = text.decode("utf-8", "replace")

    def flush() -> None:
        for writer, data in pending:
            writer.write(data)
        pending.clear()

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
    )
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > total_limit:
                raise PayloadTooLargeError(
                    f"the request body is larger than the limit of {total_limit} bytes"
                )
            parser.write(chunk)
            if pending:
                await anyio.to_thread.run_sync(flush)
        parser.finalize()
        flush()
        for w in form.files.values():
            w.close()
    except FormParserError as e:
        form.discard()
        raise MalformedUploadError(f"invalid multipart body: {e}") from e
    except ClientDisconnect as e:
        form.discard()
        raise MalformedUploadError("the client disconnected during the upload") from e
    except BaseException:
        form.discard()
        raise
    for name, w in form.files.items():
        if w.size == 0:
            form.discard()
            raise MalformedUploadError(f"file field {name!r} is empty")
    return form
