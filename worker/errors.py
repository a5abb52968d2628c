"""Errors that carry meaning across the engine, the worker and the API (torch-free).

Each error has a stable ``code`` (what clients branch on) and an HTTP ``status``. Engine errors are
permanent (bad input: retrying cannot help); a 503 (``service_unavailable``) carries ``Retry-After``.
"""

from __future__ import annotations


class GanCompressError(Exception):
    """Base class. ``code`` is stable and documented; ``detail`` is for people."""

    code: str = "internal_error"
    status: int = 500
    title: str = "Internal error"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "detail": self.detail, **self.extra}


class BadInputError(GanCompressError):
    """The user's model, spec or calibration data cannot be used. Never retried."""

    code = "bad_input"
    status = 422
    title = "Unprocessable input"


class UnsupportedFormatError(BadInputError):
    code = "unsupported_format"
    status = 415
    title = "Unsupported model format"


class CorruptModelError(BadInputError):
    code = "corrupt_model"
    title = "Model file cannot be read"


class MissingInputSpecError(BadInputError):
    code = "missing_input_spec"
    title = "Input specification required"


class UnsupportedOpError(BadInputError):
    code = "unsupported_op"
    title = "Unsupported operator or layer"


class ConversionError(BadInputError):
    """Every operator is known, but the converted model does not run or does not match the
    original (a shape mismatch inside the converted graph, a difference above tolerance)."""

    code = "conversion_failed"
    title = "Model could not be converted faithfully"


class ExternalDataError(BadInputError):
    """ONNX whose tensors live in side files: the upload is one file, so they would be missing
    (and a path in the model must never be followed)."""

    code = "external_data"
    title = "ONNX external data is not supported"


class IsolationUnavailableError(BadInputError):
    """TorchScript on a worker that cannot isolate its code, where the operator asked to refuse it."""

    code = "isolation_unavailable"
    title = "This worker cannot isolate TorchScript code"


class BadCalibrationError(BadInputError):
    code = "bad_calibration"
    title = "Calibration data cannot be used"


class BadSpecError(BadInputError):
    code = "invalid_spec"
    title = "Invalid compression spec"


class PruningError(BadInputError):
    code = "pruning_failed"
    title = "Pruning is not possible as asked"


class ExportError(GanCompressError):
    code = "export_failed"
    title = "Export failed"


class InvalidResultError(GanCompressError):
    """The engine said it succeeded, but its files do not check out (never trusted unchecked)."""

    code = "invalid_result"
    status = 500
    title = "The compression result failed the worker's checks"


class CanceledError(GanCompressError):
    code = "canceled"
    status = 409
    title = "Canceled"


class ResourceLimitError(GanCompressError):
    """The sandbox hit its memory or time limit."""

    code = "resource_limit"
    status = 422
    title = "Resource limit exceeded"


class WorkerLostError(GanCompressError):
    """The process running the job stopped (crashed, killed, shut down) before it finished; the
    job is failed rather than run twice."""

    code = "worker_lost"
    status = 500
    title = "Worker lost"


def first_line(e: BaseException | str, limit: int = 300) -> str:
    """The first line of an exception's message (or its type), or of a text, for one-line error details."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


MEMORY_MARKERS = (
    "can't allocate memory",
    "out of memory",
    "cannot allocate memory",
    "bad_alloc",
    "failed to allocate memory",  # ONNX Runtime
)


def says_out_of_memory(text: str) -> bool:
    """Whether a log or a child's output reports an allocation failure (or a Python MemoryError)."""
    low = text.lower()
    return "memoryerror" in low or any(m in low for m in MEMORY_MARKERS)


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` or anything in its cause / context chain is an allocation failure (a
    ``MemoryError``, or torch's / ONNX Runtime's "can't allocate memory"), however it was wrapped
    on the way up (an importer turns any conversion failure into ``unsupported_op``)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, MemoryError) or any(m in str(cur).lower() for m in MEMORY_MARKERS):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


# --- errors of the HTTP layer (raised by the API and by the stores it shares with the worker) ---


class HttpError(GanCompressError):
    """Errors of the HTTP layer (not of the engine)."""

    code = "bad_request"
    status = 400
    title = "Bad request"


class BadRequestError(HttpError):
    code = "bad_request"
    status = 400
    title = "Bad request"


class MalformedUploadError(BadRequestError):
    code = "malformed_upload"
    title = "The upload cannot be parsed"


class InvalidCursorError(BadRequestError):
    code = "invalid_cursor"
    title = "Invalid pagination cursor"


class UnauthorizedError(HttpError):
    code = "unauthorized"
    status = 401
    title = "Missing or invalid API key"


class NotFoundError(HttpError):
    code = "not_found"
    status = 404
    title = "Not found"


class JobNotFoundError(NotFoundError):
    code = "job_not_found"
    title = "Job not found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"
    title = "Model not found"


class CalibrationNotFoundError(NotFoundError):
    code = "calibration_not_found"
    title = "Calibration set not found"


class ArtifactNotFoundError(NotFoundError):
    code = "artifact_not_found"
    title = "Artifact not found"


class MethodNotAllowedError(HttpError):
    code = "method_not_allowed"
    status = 405
    title = "Method not allowed"


class ConflictError(HttpError):
    code = "conflict"
    status = 409
    title = "Conflict"


class IdempotencyConflictError(ConflictError):
    code = "idempotency_conflict"
    title = "Idempotency-Key reused with a different request"


class JobNotFinishedError(ConflictError):
    code = "job_not_finished"
    title = "The job has not finished"


class JobFinishedError(ConflictError):
    code = "job_finished"
    title = "The job has already finished"


class PayloadTooLargeError(HttpError):
    code = "payload_too_large"
    status = 413
    title = "Upload too large"


class UnsupportedMediaTypeError(HttpError):
    code = "unsupported_media_type"
    status = 415
    title = "Unsupported Content-Type"


class ServiceUnavailableError(HttpError):
    code = "service_unavailable"
    status = 503
    title = "Service unavailable"
