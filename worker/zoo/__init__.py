"""The zoo: reference GAN generators (one per family we support), trained briefly on data that pip
packages ship, stored with their TorchScript/ONNX exports in ``worker/zoo/data``.

Rebuild with ``make zoo`` (``python -m worker.zoo.build``). Importing this package does not import
torch; :func:`build_model` and :func:`load_torchscript` do.
"""

from worker.zoo.registry import (
    OUTPUT_NAME,
    ZOO_NAMES,
    build_model,
    example_inputs,
    image_set,
    load_manifest,
    load_torchscript,
    model_entry,
    model_path,
    zoo_dir,
)

__all__ = [
    "OUTPUT_NAME",
    "ZOO_NAMES",
    "build_model",
    "example_inputs",
    "image_set",
    "load_manifest",
    "load_torchscript",
    "model_entry",
    "model_path",
    "zoo_dir",
]
