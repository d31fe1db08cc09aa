"""The gRPC servicers: thin adapters between messages and the core."""
