"""ModelService over a real server: create, import, list, delete, export."""

from __future__ import annotations

import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import keras
import numpy as np
import pytest
from kerasrpc.client import Client, KerasRpcError
from kerasrpc.client.specs import load_message
from kerasrpc.service.registry.signature import model_signature
from kerasrpc.v1 import (
    model_service_pb2,
    model_service_pb2_grpc,
    spec_pb2,
    tensor_pb2,
    training_service_pb2,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
X = np.random.default_rng(0).normal(size=(4, 2, 8)).astype("float32")


def unique(prefix: str) -> str:
    """Return a model name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def example(name: str) -> training_service_pb2.TrainingSpec:
    """Return the training spec of an example file, e.g. "functional"."""
    request = load_message(
        EXAMPLES / f"{name}.yaml", training_service_pb2.TrainRequest()
    )
    return request.spec


def dense_spec(units: int = 5) -> spec_pb2.ModelSpec:
    """Return a Sequential spec: one Dense layer on examples of shape (2, 8)."""
    spec = example("sequential").spec
    spec.sequential.layers[0].dense.units = units
    return spec


def code_of(call: Any) -> KerasRpcError:
    """Run `call` and return the KerasRpcError it raises."""
    with pytest.raises(KerasRpcError) as raised:
        call()
    return raised.value


def upload(
    channel: grpc.Channel, name: str, data: bytes, *, chunk: int = 64 * 1024
) -> model_service_pb2.ModelVersion:
    """Import `data` as a .keras file through a raw stub, in small chunks."""

    def messages() -> Iterator[model_service_pb2.ImportModelRequest]:
        header = model_service_pb2.ImportModelHeader(model_name=name)
        yield model_service_pb2.ImportModelRequest(header=header)
        for start in range(0, len(data), chunk):
            yield model_service_pb2.ImportModelRequest(
                chunk=data[start : start + chunk]
            )

    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    try:
        response = stub.ImportModel(messages(), timeout=60)
    except grpc.RpcError as error:
        raise KerasRpcError.from_rpc_error(error) from None
    version: model_service_pb2.ModelVersion = response.model_version
    return version


def keras_predict(path: Path, x: np.ndarray = X) -> np.ndarray:
    """Load a .keras file in this process and predict `x`."""
    import kerasrpc.service.keras  # noqa: F401  (custom classes)

    model = keras.saving.load_model(path, safe_mode=True)
    return np.asarray(model.predict(x, verbose=0))


# Creating -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("example_name", "input_name", "summary_types"),
    [
        ("sequential", "", ["Dense"]),
        ("functional", "CustomInput", ["InputLayer", "Dense"]),
        ("custom_layer", "", ["AffineDense"]),
        ("model_subclass", "inputs", ["Dense"]),
    ],
)
def test_create_stores_each_example_style_with_its_summary_and_metadata(
    client: Client, example_name: str, input_name: str, summary_types: list[str]
) -> None:
    training = example(example_name)
    name = unique(example_name.replace("_", "-"))

    created = client.create_model(name, training.spec, compile=training.compile)

    version = created.model_version
    assert (version.model_name, version.version) == (name, 1)
    assert version.source == model_service_pb2.VERSION_SOURCE_CREATED
    assert version.parameter_count == created.summary.parameter_count == 45
    assert version.size_bytes > 0
    assert version.create_time.seconds > 0
    assert created.summary.name == "CustomModel"
    assert [layer.type for layer in created.summary.layers] == summary_types
    assert "CustomLayer" in created.summary.text
    metadata = client.metadata(name)
    assert metadata.version == 1
    [given] = metadata.inputs
    [output] = metadata.outputs
    if input_name:
        assert given.name == input_name
    assert (list(given.shape), given.dtype) == (
        [-1, 2, 8],
        tensor_pb2.DATA_TYPE_FLOAT32,
    )
    assert (output.name, list(output.shape)) == ("CustomLayer", [-1, 2, 5])
    assert client.summary(name).parameter_count == 45


def test_functional_summary_lists_the_named_input(client: Client) -> None:
    training = example("functional")
    name = unique("functional")

    created = client.create_model(name, training.spec)

    assert created.summary.layers[0].name == "CustomInput"
    assert list(created.summary.layers[0].output_shape) == [-1, 2, 8]
    assert "CustomInput" in client.summary(name).text


def test_validate_only_summarises_and_stores_nothing(client: Client) -> None:
    name = unique("dry-run")

    created = client.create_model(name, dense_spec(7), validate_only=True)

    assert created.summary.parameter_count == 8 * 7 + 7
    assert not created.HasField("model_version")
    assert code_of(lambda: client.get_model(name)).code == grpc.StatusCode.NOT_FOUND


def test_invalid_spec_names_the_field_and_stores_nothing(client: Client) -> None:
    name = unique("bad-spec")

    error = code_of(lambda: client.create_model(name, dense_spec(0)))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = error.violations
    assert violation.field == "spec.sequential.layers[0].dense.units"
    assert "expected" in violation.description
    assert violation.description.endswith("received units=0")
    assert code_of(lambda: client.get_model(name)).code == grpc.StatusCode.NOT_FOUND


def test_invalid_compile_spec_names_the_field(client: Client) -> None:
    training = example("sequential")
    training.compile.ClearField("loss")

    error = code_of(
        lambda: client.create_model(
            unique("bad-compile"), training.spec, compile=training.compile
        )
    )

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == ["compile.loss"]


@pytest.mark.parametrize(
    "bad_name", ["", "-leading-dash", "has/slash", "x" * 65, "..."]
)
def test_invalid_model_names_are_refused(client: Client, bad_name: str) -> None:
    error = code_of(lambda: client.create_model(bad_name, dense_spec()))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = error.violations
    assert violation.field == "model_name"
    assert violation.description.startswith("expected 1-64 letters")
    assert f"received {bad_name!r}" in violation.description


# Versions -----------------------------------------------------------------


def test_versions_count_up_and_are_never_reused(client: Client) -> None:
    name = unique("versions")
    for units in (3, 4):
        client.create_model(name, dense_spec(units), description=f"{units} units")

    client.delete_version(name, 2)
    third = client.create_model(name, dense_spec(5)).model_version

    assert third.version == 3
    model = client.get_model(name)
    assert [v.version for v in model.versions] == [1, 3]
    assert model.latest_version == 3
    assert client.get_version(name).version == 3
    assert client.get_version(name, 1).description == "3 units"
    assert name in [m.name for m in client.list_models()]
    client.delete_model(name)
    assert client.create_model(name, dense_spec()).model_version.version == 4


def test_unknown_versions_and_models_are_not_found(client: Client) -> None:
    name = unique("missing")
    client.create_model(name, dense_spec())
    client.create_model(name, dense_spec())

    error = code_of(lambda: client.get_version(name, 7))

    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.message == f"model '{name}' has no version 7; its versions are 1, 2"
    for call in (
        lambda: client.metadata(name, 9),
        lambda: client.summary(name, 9),
        lambda: client.delete_version(name, 9),
        lambda: client.get_model("no-such-model"),
        lambda: client.delete_model("no-such-model"),
    ):
        assert code_of(call).code == grpc.StatusCode.NOT_FOUND


def test_deleting_version_zero_is_invalid(client: Client) -> None:
    name = unique("zero")
    client.create_model(name, dense_spec())

    error = code_of(lambda: client.delete_version(name, 0))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == ["version"]
    assert client.get_model(name).latest_version == 1


def test_deleted_model_is_gone(client: Client) -> None:
    name = unique("gone")
    client.create_model(name, dense_spec())

    client.delete_model(name)

    assert name not in [m.name for m in client.list_models()]
    assert code_of(lambda: client.metadata(name)).code == grpc.StatusCode.NOT_FOUND


# Import and export ----------------------------------------------------------


def test_exported_keras_file_imports_and_predicts_the_same(
    client: Client, tmp_path: Path
) -> None:
    training = example("custom_layer")
    source = unique("source")
    client.create_model(source, training.spec, compile=training.compile)
    exported = client.export_model(source, tmp_path / "source.keras")

    copy = unique("copy")
    imported = client.import_model(copy, exported, description="round trip")

    assert imported.source == model_service_pb2.VERSION_SOURCE_IMPORTED
    assert (imported.version, imported.description) == (1, "round trip")
    assert imported.size_bytes == exported.stat().st_size
    assert imported.parameter_count == 45
    again = client.export_model(copy, tmp_path / "copy.keras")
    np.testing.assert_array_equal(keras_predict(again), keras_predict(exported))
    assert client.metadata(copy).outputs == client.metadata(source).outputs


def test_metadata_opens_a_fixed_input_batch_and_keeps_output_shapes(
    client: Client, tmp_path: Path
) -> None:
    features = keras.Input((4,), batch_size=32, name="features")
    per_row = keras.layers.Dense(2, name="per_row")(features)
    # Averaged over the batch: this output's first dimension is not the batch.
    column_means = keras.layers.Lambda(
        lambda x: keras.ops.mean(x, axis=0), name="column_means"
    )(features)
    model = keras.Model(features, [per_row, column_means])
    inputs, outputs = model_signature(model)

    assert [(s.name, list(s.shape)) for s in inputs] == [("features", [-1, 4])]
    assert [(s.name, list(s.shape)) for s in outputs] == [
        ("per_row", [-1, 2]),
        ("column_means", [4]),
    ]


def test_import_of_garbage_is_invalid_and_stores_nothing(
    client: Client, channel: grpc.Channel, server: Any
) -> None:
    name = unique("garbage")
    data = b"not a keras file" * 100

    error = code_of(lambda: upload(channel, name, data))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == ["chunk"]
    assert error.message == (
        "chunk: expected a .keras (zip) archive, received "
        f"{len(data)} bytes that are not one"
    )
    assert_no_server_details(error.message, server)
    assert code_of(lambda: client.get_model(name)).code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "damage",
    [
        lambda data, entry: data.__setitem__(slice(entry, entry + 4), b"XXXX"),
        # "Version needed to extract" 25.5, which zipfile does not support.
        lambda data, entry: data.__setitem__(entry + 6, 0xFF),
        # A name flagged UTF-8 that is not.
        lambda data, entry: (
            data.__setitem__(entry + 9, data[entry + 9] | 0x08),
            data.__setitem__(entry + 46, 0xFF),
        ),
    ],
    ids=["magic", "version", "utf8-name"],
)
def test_import_of_an_archive_with_a_damaged_directory_is_invalid(
    client: Client, channel: grpc.Channel, tmp_path: Path, damage: Any
) -> None:
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(
        tmp_path / "good.keras"
    )
    data = bytearray((tmp_path / "good.keras").read_bytes())
    damage(data, data.index(b"PK\x01\x02"))  # the first central directory entry
    name = unique("damaged")

    error = code_of(lambda: upload(channel, name, bytes(data)))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == ["chunk"]
    assert "received a damaged one" in error.message
    assert code_of(lambda: client.get_model(name)).code == grpc.StatusCode.NOT_FOUND


def test_import_of_an_archive_that_fails_to_load_hides_server_details(
    client: Client, channel: grpc.Channel, server: Any, tmp_path: Path
) -> None:
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(
        tmp_path / "good.keras"
    )
    broken = tmp_path / "broken.keras"
    with (
        zipfile.ZipFile(tmp_path / "good.keras") as good,
        zipfile.ZipFile(broken, "w") as out,
    ):
        for member in good.namelist():
            corrupt = member.endswith(".h5")
            out.writestr(member, b"not hdf5" if corrupt else good.read(member))
    name = unique("broken")

    error = code_of(lambda: upload(channel, name, broken.read_bytes()))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == ["chunk"]
    assert "loads with safe_mode, received one that fails: " in error.message
    assert "file signature not found" in error.message
    assert_no_server_details(error.message, server)
    assert code_of(lambda: client.get_model(name)).code == grpc.StatusCode.NOT_FOUND


def assert_no_server_details(message: str, server: Any) -> None:
    """Assert an error message shows no server path or Python exception class."""
    assert "/tmp" not in message
    assert str(server.app.settings.state_dir) not in message
    assert "Error:" not in message
    assert "Exception:" not in message


def test_import_needs_the_header_first(channel: grpc.Channel) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    chunk = model_service_pb2.ImportModelRequest(chunk=b"PK")

    with pytest.raises(grpc.RpcError) as raised:
        stub.ImportModel(iter([chunk]), timeout=30)

    error = KerasRpcError.from_rpc_error(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == ["header"]


def test_import_over_the_size_limit_is_refused(
    start_server: Any, tmp_path: Path
) -> None:
    running = start_server(max_message_bytes=4096)  # imports up to 64 KiB
    model = keras.Sequential([keras.Input((200,)), keras.layers.Dense(200)])
    model.save(tmp_path / "big.keras")
    data = (tmp_path / "big.keras").read_bytes()
    assert len(data) > 64 * 1024

    with grpc.insecure_channel(running.address) as channel:
        error = code_of(lambda: upload(channel, "big", data, chunk=2048))
        listed = Client(channel=channel).list_models()

    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "65536 bytes" in error.message
    assert listed == []


def test_import_of_an_archive_that_unpacks_past_the_limit_is_refused(
    start_server: Any, tmp_path: Path
) -> None:
    running = start_server(max_message_bytes=4096)  # imports up to 64 KiB
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(
        tmp_path / "good.keras"
    )
    bomb = tmp_path / "bomb.keras"
    with (
        zipfile.ZipFile(tmp_path / "good.keras") as good,
        zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive,
    ):
        for member in good.namelist():
            archive.writestr(member, good.read(member))
        archive.writestr("padding.bin", b"\0" * (1 << 20))
    data = bomb.read_bytes()
    assert len(data) < 64 * 1024

    with grpc.insecure_channel(running.address) as channel:
        error = code_of(lambda: upload(channel, "bomb", data, chunk=2048))
        listed = Client(channel=channel).list_models()

    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "unpacks to" in error.message
    assert "the largest accepted is 65536 bytes" in error.message
    assert listed == []


def test_saved_model_export_is_callable_by_tensorflow(
    client: Client, tmp_path: Path
) -> None:
    import tensorflow as tf

    training = example("model_subclass")
    name = unique("saved")
    client.create_model(name, training.spec)
    expected = keras_predict(client.export_model(name, tmp_path / "m.keras"))

    archive = client.export_model(
        name,
        tmp_path / "m.zip",
        format=model_service_pb2.EXPORT_FORMAT_SAVED_MODEL,
    )
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(tmp_path / "serving")

    loaded = tf.saved_model.load(str(tmp_path / "serving" / "1"))
    assert "serving_default" in loaded.signatures
    np.testing.assert_allclose(loaded.serve(X).numpy(), expected, rtol=1e-6)


def test_saved_model_exports_beyond_the_limit_are_refused_until_one_ends(
    server: Any, client: Client, tmp_path: Path
) -> None:
    from kerasrpc.service.registry.registry import SAVED_MODEL_EXPORTS_AT_ONCE

    name = unique("limited")
    client.create_model(name, dense_spec())
    saved_model = model_service_pb2.EXPORT_FORMAT_SAVED_MODEL
    slots = server.app.registry.saved_model_exports
    for _ in range(SAVED_MODEL_EXPORTS_AT_ONCE):  # as if that many were running
        slots.acquire()
    try:
        with pytest.raises(KerasRpcError) as refused:
            client.export_model(name, tmp_path / "a.zip", format=saved_model)
        keras_file = client.export_model(name, tmp_path / "a.keras")
    finally:
        for _ in range(SAVED_MODEL_EXPORTS_AT_ONCE):
            slots.release()
    archive = client.export_model(name, tmp_path / "b.zip", format=saved_model)

    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "SavedModel exports are running" in refused.value.message
    assert keras_file.stat().st_size > 0
    assert zipfile.is_zipfile(archive)


def test_export_streams_size_and_file_name_first(channel: grpc.Channel) -> None:
    name = unique("stream")
    Client(channel=channel).create_model(name, dense_spec())
    stub = model_service_pb2_grpc.ModelServiceStub(channel)

    responses = list(
        stub.ExportModel(model_service_pb2.ExportModelRequest(model_name=name))
    )

    assert responses[0].file_name == f"{name}-v1.keras"
    assert responses[0].size_bytes == sum(len(r.chunk) for r in responses) > 0


def test_malformed_requests_are_invalid_arguments(channel: grpc.Channel) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    name = unique("malformed")
    Client(channel=channel).create_model(name, dense_spec())
    calls = {
        "spec": lambda: stub.CreateModel(
            model_service_pb2.CreateModelRequest(model_name=name), timeout=30
        ),
        "version": lambda: stub.GetModelVersion(
            model_service_pb2.GetModelVersionRequest(model_name=name, version=-1),
            timeout=30,
        ),
        "format": lambda: list(
            stub.ExportModel(
                model_service_pb2.ExportModelRequest(model_name=name, format=7),  # type: ignore[arg-type]
                timeout=30,
            )
        ),
    }
    for field, call in calls.items():
        with pytest.raises(grpc.RpcError) as raised:
            call()
        error = KerasRpcError.from_rpc_error(raised.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, field
        assert error.violations[0].field.startswith(field)
        assert "received" in error.violations[0].description
