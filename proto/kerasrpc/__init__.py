"""kerasrpc: train and serve Keras models over gRPC."""

__version__ = "0.1.0"
