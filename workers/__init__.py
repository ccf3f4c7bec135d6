"""The worker pool's entry point: ``python -m workers``. The work itself lives in
``service/`` (use cases in ``service.usecases``, the process in ``service.entrypoints.worker``)."""
