"""Uploaded models and calibration sets: content-addressed blobs plus per-owner records in Redis.

The blob lives once in the store under its sha256 (``uploads/models/<sha256>``); the record
``P model:<owner>:<id>`` makes it visible to one owner (API key). The id is derived from the
sha256, so the same bytes uploaded twice give the same model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, Field
from redis import Redis

from worker.core.storage import ArtifactStore, UploadWriter
from worker.errors import CalibrationNotFoundError, ModelNotFoundError
from worker.spec import ModelFormat

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)


class InputInfo(BaseModel):
    """One graph input of an uploaded ONNX model."""

    name: str
    shape: list[int | str | None] = Field(description="Dims: an int, a symbolic name, or null.")
    dtype: str
    distribution: str | None = Field(
        None,
        description="How the engine samples this input unless the spec says otherwise: float rank-4 "
        "inputs are images (calibration data needed), other floats normal latents, integer inputs "
        "indexing an embedding table randint labels; null: the spec must describe it.",
    )


class ModelInfo(BaseModel):
    format: ModelFormat
    inputs: list[InputInfo] | None = None


class CalibrationInfo(BaseModel):
    format: str = Field(description="npy | npz | zip")
    arrays: dict[str, list[int]] | None = Field(None, description="npy/npz: array name -> shape.")
    images: int | None = Field(None, description="zip: number of image files.")


class ModelRecord(BaseModel):
    id: str = Field(description="Model id (derived from the sha256: same bytes, same id).")
    sha256: str
    format: ModelFormat = Field(description="Decided from the content: torchscript | onnx.")
    bytes: int
    inputs: list[InputInfo] | None = Field(None, description="ONNX graph inputs; null for TorchScript.")
    filename: str | None = None
    created_at: float


class CalibrationRecord(BaseModel):
    id: str
    sha256: str
    format: str = Field(description="npy | npz | zip (of images).")
    bytes: int
    arrays: dict[str, list[int]] | None = None
    images: int | None = None
    filename: str | None = None
    created_at: float

    @property
    def suffix(self) -> str:
        return "." + self.format


def model_key(sha256: str) -> str:
    return f"uploads/models/{sha256}"


def calibration_key(sha256: str) -> str:
    return f"uploads/calibrations/{sha256}"


class UploadRegistry:
    def __init__(self, redis: Redis, prefix: str, store: ArtifactStore) -> None:
        self.r = redis
        self.prefix = prefix
        self.store = store

    def _mkey(self, owner: str, model_id: str) -> str:
        return f"{self.prefix}model:{owner}:{model_id}"

    def _ckey(self, owner: str, cal_id: str) -> str:
        return f"{self.prefix}cal:{owner}:{cal_id}"

    @staticmethod
    def model_record(writer: UploadWriter, info: ModelInfo, filename: str | None) -> ModelRecord:
        """The record a sniffed upload will get (nothing is stored yet)."""
        return ModelRecord(
            id="mdl_" + writer.sha256[:32],
            sha256=writer.sha256,
            format=info.format,
            bytes=writer.size,
            inputs=info.inputs,
            filename=_base(filename),
            created_at=time.time(),
        )

    @staticmethod
    def calibration_record(
        writer: UploadWriter, info: CalibrationInfo, filename: str | None
    ) -> CalibrationRecord:
        return CalibrationRecord(
            id="cal_" + writer.sha256[:32],
            sha256=writer.sha256,
            bytes=writer.size,
            filename=_base(filename),
            created_at=time.time(),
            **info.model_dump(),
        )

    def add_model(self, owner: str, writer: UploadWriter, rec: ModelRecord) -> ModelRecord:
        """Commit the upload and record it for ``owner``; the same bytes give the existing record."""
        self.store.commit_upload(writer, model_key(rec.sha256))
        return self._put(self._mkey(owner, rec.id), rec, ModelRecord, owner)

    def add_calibration(self, owner: str, writer: UploadWriter, rec: CalibrationRecord) -> CalibrationRecord:
        self.store.commit_upload(writer, calibration_key(rec.sha256))
        return self._put(self._ckey(owner, rec.id), rec, CalibrationRecord, owner)

    def _put(self, key: str, rec: T, cls: type[T], owner: str) -> T:
        if self.r.set(key, rec.model_dump_json(), nx=True):
            log.info("upload.stored kind=%s id=%s owner=%s", cls.__name__, getattr(rec, "id", ""), owner)
            return rec
        return self._get(key, cls) or rec

    def model(self, owner: str, model_id: str) -> ModelRecord:
        rec = self._get(self._mkey(owner, model_id), ModelRecord)
        if rec is None:
            raise ModelNotFoundError(f"no model {model_id!r}")
        return rec

    def calibration(self, owner: str, cal_id: str) -> CalibrationRecord:
        rec = self._get(self._ckey(owner, cal_id), CalibrationRecord)
        if rec is None:
            raise CalibrationNotFoundError(f"no calibration set {cal_id!r}")
        return rec

    def _get(self, key: str, cls: type[T]) -> T | None:
        raw = self.r.get(key)
        return cls.model_validate_json(raw) if raw else None


def _base(filename: str | None) -> str | None:
    return Path(filename).name[:255] if filename else None
