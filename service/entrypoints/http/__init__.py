"""The REST/JSON API beside gRPC (``HTTP_LISTEN``) and the operations console (``/console``).

``transcoding`` turns the ``google.api.http`` rules of the protos into routes and HTTP
requests into request messages; ``frame`` runs each call through the gRPC call frame
(``entrypoints/grpc/calls.py``) with a context adapter; ``responses`` maps statuses to HTTP;
``server`` is the aiohttp application; ``console_api`` and ``console/`` are the console.
"""
