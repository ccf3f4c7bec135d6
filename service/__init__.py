"""The BareMetal image service: gRPC front end and what the workers share with it."""
