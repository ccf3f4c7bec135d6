"""The gRPC entrypoint: servicers, conversions, the frame of every call, and the server."""
