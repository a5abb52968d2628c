"""The torch-free layer that the API (``app/``) and the worker share: settings, the job store, the
artifact store, upload records, the Redis client, stage metrics and the Celery configuration.
Nothing here imports ``app`` or the engine (``tests/test_architecture.py`` enforces it)."""
