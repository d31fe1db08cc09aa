"""The kerasrpc command line: serve, train, watch, predict and manage models."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message
from kerasrpc.client.client import Client
from kerasrpc.client.errors import KerasRpcError
from kerasrpc.client.specs import SpecFileError, load_message
from kerasrpc.v1 import model_service_pb2, training_service_pb2

DEFAULT_SERVER = "127.0.0.1:50051"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        status: int = args.run(args)
    except KerasRpcError as error:
        _print_error(error)
        return 1
    except (SpecFileError, OSError, ValueError) as error:
        print(f"kerasrpc: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status


def _print_error(error: KerasRpcError) -> None:
    print(f"kerasrpc: {error.code.name}: {error.message}", file=sys.stderr)
    for violation in error.violations:
        print(f"  {violation.field}: {violation.description}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kerasrpc",
        description="Train and serve Keras models over gRPC.",
    )
    parser.add_argument(
        "-s",
        "--server",
        default=os.environ.get("KERASRPC_SERVER", DEFAULT_SERVER),
        help="the server's host:port (env KERASRPC_SERVER; default %(default)s)",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_serve(commands)
    _add_info(commands)
    _add_health(commands)
    _add_train(commands)
    _add_watch(commands)
    _add_jobs(commands)
    _add_models(commands)
    _add_datasets(commands)
    _add_predict(commands)
    return parser


Commands = Any  # argparse's private _SubParsersAction


# serve ---------------------------------------------------------------------


def _add_serve(commands: Commands) -> None:
    from kerasrpc.service.settings import Settings

    serve = commands.add_parser(
        "serve",
        help="start the server",
        description="Start the server. Each flag can also be set with the "
        "environment variable KERASRPC_<FLAG> (upper case, underscores).",
    )
    for field in dataclasses.fields(Settings):
        serve.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            default=None,
            metavar=field.name.upper(),
            help=field.metadata.get("help", ""),
        )
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    from kerasrpc.service.cli_serve import run_server

    return run_server(vars(args))


# info ----------------------------------------------------------------------


def _add_info(commands: Commands) -> None:
    info = commands.add_parser("info", help="show the server's version and device")
    info.set_defaults(run=_info)


def _info(args: argparse.Namespace) -> int:
    with Client(args.server, timeout=30) as client:
        _print_message(client.server_info())
    return 0


def _add_health(commands: Commands) -> None:
    health = commands.add_parser(
        "health",
        help="exit 0 when the server reports SERVING",
        description="Ask the server's grpc.health.v1 service; exit 0 when it "
        "reports SERVING, 1 otherwise.",
    )
    health.add_argument("--service", default="", help="one service's full name")
    health.add_argument("--timeout", type=float, default=5.0)
    health.set_defaults(run=_health)


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(args.server) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(
                health_pb2.HealthCheckRequest(service=args.service),
                timeout=args.timeout,
            )
        except grpc.RpcError as error:
            print(f"kerasrpc: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


# train and watch -----------------------------------------------------------


def _add_train(commands: Commands) -> None:
    train = commands.add_parser(
        "train",
        help="train a model described by a spec file",
        description="Train a model from a YAML or JSON TrainRequest file and show "
        "its progress; see examples/.",
    )
    train.add_argument("spec", type=Path, help="a .yaml or .json TrainRequest")
    train.add_argument("--model", help="store the result under this model name")
    train.add_argument(
        "--detach", action="store_true", help="print the job id and return at once"
    )
    train.set_defaults(run=_train)


def _train(args: argparse.Namespace) -> int:
    request = load_message(args.spec, training_service_pb2.TrainRequest())
    if args.model:
        request.spec.model_name = args.model
    with Client(args.server, timeout=60) as client:
        if args.detach:
            job = client.start_training(request.spec)
            print(job.job_id)
            return 0
        return _follow(client.train(request.spec), request.spec, sys.stdout)


def _add_watch(commands: Commands) -> None:
    watch = commands.add_parser("watch", help="follow a training job's events")
    watch.add_argument("job_id")
    watch.add_argument("--from-step", type=int, default=0)
    watch.set_defaults(run=_watch)


def _watch(args: argparse.Namespace) -> int:
    with Client(args.server, timeout=60) as client:
        job = client.get_job(args.job_id)
        spec = training_service_pb2.TrainingSpec(model_name=job.model_name)
        events = client.watch(args.job_id, from_step=args.from_step)
        return _follow(events, spec, sys.stdout, total=job.total_steps)


def _follow(
    events: Iterator[training_service_pb2.TrainingEvent],
    spec: training_service_pb2.TrainingSpec,
    out: TextIO,
    total: int = 0,
) -> int:
    """Show events as a progress bar on a terminal, as plain lines elsewhere."""
    from kerasrpc.client.progress import EventPrinter

    printer = EventPrinter(out, total=total)
    try:
        for event in events:
            printer.show(event)
    finally:
        printer.close()
    return 0 if printer.final_state in ("", "JOB_STATE_SUCCEEDED") else 1


# jobs ----------------------------------------------------------------------


def _add_jobs(commands: Commands) -> None:
    jobs = commands.add_parser("jobs", help="list, show or cancel training jobs")
    verbs = jobs.add_subparsers(title="verbs", metavar="VERB", required=True)
    listing = verbs.add_parser("list", help="list jobs, newest first")
    listing.add_argument("--model", default="")
    listing.set_defaults(run=_jobs_list)
    for verb, run in (("get", _jobs_get), ("cancel", _jobs_cancel)):
        sub = verbs.add_parser(verb, help=f"{verb} one job")
        sub.add_argument("job_id")
        sub.set_defaults(run=run)


def _jobs_list(args: argparse.Namespace) -> int:
    with Client(args.server, timeout=30) as client:
        for job in client.list_jobs(model_name=args.model):
            state = training_service_pb2.JobState.Name(job.state)
            print(
                f"{job.job_id}  {job.model_name}  {state.removeprefix('JOB_STATE_')}"
                f"  step {job.step}/{job.total_steps}"
            )
    return 0


def _jobs_get(args: argparse.Namespace) -> int:
    with Client(args.server, timeout=30) as client:
        _print_message(client.get_job(args.job_id))
    return 0


def _jobs_cancel(args: argparse.Namespace) -> int:
    with Client(args.server, timeout=30) as client:
        _print_message(client.cancel(args.job_id))
    return 0


# models --------------------------------------------------------------------


def _add_models(commands: Commands) -> None:
    models = commands.add_parser("models", help="manage stored models")
    verbs = models.add_subparsers(title="verbs", metavar="VERB", required=True)
    verbs.add_parser("list", help="list models and versions").set_defaults(
        run=_models_list
    )
    create = verbs.add_parser(
        "create", help="build a model from a spec file, untrained"
    )
    create.add_argument("model_name")
    create.add_argument("spec", type=Path, help="a .yaml or .json TrainRequest")
    create.add_argument("--validate-only", action="store_true")
    create.set_defaults(run=_models_create)
    imported = verbs.add_parser("import", help="upload a .keras file")
    imported.add_argument("model_name")
    imported.add_argument("file", type=Path)
    imported.set_defaults(run=_models_import)
    for verb, run in (
        ("get", _models_get),
        ("summary", _models_summary),
        ("metadata", _models_metadata),
        ("delete", _models_delete),
    ):
        sub = verbs.add_parser(verb, help=f"{verb} a model or version")
        sub.add_argument("model_name")
        sub.add_argument("--version", type=int, default=0, help="0: the latest")
        sub.set_defaults(run=run)
    export = verbs.add_parser("export", help="download a version")
    export.add_argument("model_name")
    export.add_argument("destination", type=Path)
    export.add_argument("--version", type=int, default=0)
    export.add_argument("--format", choices=("keras", "saved_model"), default="keras")
    export.set_defaults(run=_models_export)


def _models_list(args: argparse.Namespace) -> int:
    with Client(args.server, timeout=30) as client:
        for model in client.list_models():
            versions = ", ".join(str(v.version) for v in model.versions) or "none"
            print(f"{model.name}  versions: {versions}")
    return 0


def _models_create(args: argparse.Namespace) -> int:
    request = load_message(args.spec, training_service_pb2.TrainRequest())
    with Client(args.server, timeout=120) as client:
        response = client.create_model(
            args.model_name,
            request.spec.spec,
            compile=request.spec.compile,
            validate_only=args.validate_only,
        )
    print(response.summary.text)
    if response.HasField("model_version"):
        print(f"stored {args.model_name} version {response.model_version.version}")
    return 0


def _models_import(args: argparse.Namespace) -> int:
    with Client(args.server, timeout=600) as client:
        version = client.import_model(args.model_name, args.file)
    print(f"stored {version.model_name} version {version.version}")
    return 0


def _models_get(args: argparse.Namespace) -> int:
    with Client(args.server, timeout=30) as client:
        if args.version:
            _print_message(client.get_version(args.model_name, args.version))
        else:
            _print_message(client.get_model(args.model_name))
    return 0


def _models_summary(args: argparse.Namespace) -> int:
    with Client(args.server, timeout=60) as client:
        print(client.summary(args.model_name, args.version).text)
    return 0


def _models_metadata(args: argparse.Namespace) -> int:
    with Client(args.server, timeout=60) as client:
        _print_message(client.metadata(args.model_name, args.version))
    return 0


def _models_delete(args: argparse.Namespace) -> int:
    with Client(args.server, timeout=60) as client:
        if args.version:
            client.delete_version(args.model_name, args.version)
        else:
            client.delete_model(args.model_name)
    return 0


def _models_export(args: argparse.Namespace) -> int:
    formats = {
        "keras": model_service_pb2.EXPORT_FORMAT_KERAS,
        "saved_model": model_service_pb2.EXPORT_FORMAT_SAVED_MODEL,
    }
    with Client(args.server, timeout=600) as client:
        path = client.export_model(
            args.model_name,
            args.destination,
            version=args.version,
            format=formats[args.format],
        )
    print(path)
    return 0


# datasets ------------------------------------------------------------------


def _add_datasets(commands: Commands) -> None:
    datasets = commands.add_parser("datasets", help="upload and manage datasets")
    verbs = datasets.add_subparsers(title="verbs", metavar="VERB", required=True)
    upload = verbs.add_parser(
        "upload", help="upload an .npz file with 'features' and 'labels' arrays"
    )
    upload.add_argument("name")
    upload.add_argument("file", type=Path)
    upload.set_defaults(run=_datasets_upload)
    verbs.add_parser("list", help="list datasets").set_defaults(run=_datasets_list)
    delete = verbs.add_parser("delete", help="delete a dataset")
    delete.add_argument("dataset_id")
    delete.set_defaults(run=_datasets_delete)


def _datasets_upload(args: argparse.Namespace) -> int:
    with np.load(args.file) as arrays, Client(args.server, timeout=600) as client:
        missing = {"features", "labels"} - set(arrays.files)
        if missing:
            raise ValueError(
                f"{args.file} expected arrays 'features' and 'labels', "
                f"received {', '.join(arrays.files) or 'none'}"
            )
        dataset = client.upload_dataset(args.name, arrays["features"], arrays["labels"])
    print(dataset.dataset_id)
    return 0


def _datasets_list(args: argparse.Namespace) -> int:
    with Client(args.server, timeout=30) as client:
        for dataset in client.list_datasets():
            print(f"{dataset.dataset_id}  {dataset.name}  {dataset.examples} examples")
    return 0


def _datasets_delete(args: argparse.Namespace) -> int:
    with Client(args.server, timeout=30) as client:
        client.delete_dataset(args.dataset_id)
    return 0


# predict -------------------------------------------------------------------


def _add_predict(commands: Commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="predict a batch from an .npy or .npz file",
        description="Predict a batch. An .npy file is the single input; an .npz "
        "file holds one array per input name. Outputs go to --output (.npz) or "
        "are printed.",
    )
    predict.add_argument("model_name")
    predict.add_argument("inputs", type=Path)
    predict.add_argument("--version", type=int, default=0)
    predict.add_argument("--output", type=Path, help="write outputs to this .npz")
    predict.set_defaults(run=_predict)


def _predict(args: argparse.Namespace) -> int:
    loaded = np.load(args.inputs)
    inputs: Any = (
        dict(loaded.items()) if isinstance(loaded, np.lib.npyio.NpzFile) else loaded
    )
    with Client(args.server, timeout=600) as client:
        outputs = client.predict(args.model_name, inputs, version=args.version)
    if args.output:
        np.savez(args.output, **outputs)  # type: ignore[arg-type]
        print(args.output)
    else:
        for name, values in outputs.items():
            print(f"{name} {list(values.shape)}")
            print(np.array2string(values, threshold=200))
    return 0


def _print_message(message: Message) -> None:
    print(
        json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2)
    )


if __name__ == "__main__":
    sys.exit(main())
