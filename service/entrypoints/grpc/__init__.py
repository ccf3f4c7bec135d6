"""The gRPC transport: the frame of every call (``calls``, with ``traced``), the servicers,
endpoint discovery and conversions. The server itself is assembled by the API process
(``service.entrypoints.api``)."""
