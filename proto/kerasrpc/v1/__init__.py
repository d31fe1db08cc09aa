"""Generated protobuf and gRPC stubs of the kerasrpc v1 API."""
