"""ONNX checks shared by the API's upload check and the engine (protobuf only, no torch, no
onnxruntime), so both refuse the same files for the same stated reason."""

from __future__ import annotations

from typing import Any


def external_tensors(model: Any) -> list[str]:
    """Names of tensors in the model's graph, its subgraphs and its model-local functions that use
    external data."""
    import onnx

    found: list[str] = []

    def tensors(t: Any) -> None:
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            found.append(t.name or "(unnamed)")

    def walk(g: Any) -> None:
        for t in g.initializer:
            tensors(t)
        for st in g.sparse_initializer:
            tensors(st.values)
            tensors(st.indices)
        nodes(g.node)

    def nodes(ns: Any) -> None:
        for node in ns:
            for a in node.attribute:
                if a.HasField("t"):
                    tensors(a.t)
                for t in a.tensors:
                    tensors(t)
                if a.HasField("g"):
                    walk(a.g)
                for sg in a.graphs:
                    walk(sg)

    walk(model.graph)
    for fn in model.functions:
        nodes(fn.node)
    return found
