"""The gRPC entrypoint: servicers, conversions, interceptors and the server."""
