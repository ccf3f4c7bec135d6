"""The command-line client of the public API (``python -m service image|operation ...``):
a gRPC client over the generated stubs, like any SDK. ``connection``: the channel, retries and
waiting; ``render``: what it prints and the progress line; ``commands``: the commands."""

from service.entrypoints.client.commands import image, operation

__all__ = ["image", "operation"]
