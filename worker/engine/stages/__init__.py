"""The pipeline's stages, each a function of what it needs (``Workbench`` + its own part of the
spec) to an outcome: ``setup`` (import, inputs, the held-out reference), ``pruning``,
``recovery``, ``training`` (distillation), ``exporting``. ``worker.engine.pipeline`` runs them in
order; the mechanics they call live one level down (``prune``, ``recover``, ``distill``,
``export``)."""
