"""The kerasrpc server: builds, trains, stores and serves Keras models."""
