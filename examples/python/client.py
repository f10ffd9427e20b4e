#!/usr/bin/env python3
"""Download one URL through transferd and follow its progress.

This example shows the basic life of a download with the transferd gRPC API:

1. ``CreateDownload`` queues the download; it returns once the download is durably stored.
2. ``WatchDownload`` streams its progress: the current state first, then every status change and
   byte progress, ending after a terminal status (COMPLETED, CANCELED or ERROR).
3. ``GetDownload`` fetches the final operation, including the error when the download failed.

The Python stubs are generated at run time from the repository's ``proto/`` directory with
``grpc_tools.protoc`` into a temporary directory, so no generated code is committed.

Usage::

    python client.py --server 127.0.0.1:50051 https://example.com/file.bin --result-file file.bin

It prints one line per progress message, for example::

    status=RUNNING bytes=1048576/4194304 response_changed=True restarted=False

(``bytes=received/total``; a total of 0 means the size is not known yet), and finally::

    result_file=file.bin status=COMPLETED

The result file is relative to the server's download directory. The exit status is 0 when the
download completed and 1 otherwise. Interrupting the client (Ctrl-C) does not cancel the
download: it keeps running in the server.

TLS: against a server started with ``--tls-cert``, pass the CA that signed its certificate with
``--ca-cert ca.pem`` (or ``TRANSFERD_CA_CERT``); the channel then uses
``grpc.ssl_channel_credentials``. For a server with ``--tls-client-ca`` (mutual TLS) add
``--client-cert``/``--client-key`` (``TRANSFERD_CLIENT_CERT``/``TRANSFERD_CLIENT_KEY``), and
``--server-name`` (``TRANSFERD_SERVER_NAME``) when the certificate names a host other than the
one in ``--server``. Without ``--ca-cert`` the channel is plaintext::

    python client.py --server 127.0.0.1:50051 --ca-cert ca.pem https://example.com/file.bin

Tokens: against a server started with ``--auth-tokens``, pass the token with ``--token`` or,
better (arguments show in the process list), in ``TRANSFERD_TOKEN``; it is sent as
``authorization: Bearer TOKEN`` with every call.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import grpc
from grpc_tools import protoc

#: The contract, relative to the proto root.
PROTO_FILE = "backgroundtransfer/v1/backgroundtransfer.proto"
#: The proto root of this repository (``examples/python/client.py`` -> ``proto/``).
DEFAULT_PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"
#: Prefix of the BackgroundTransferStatus value names, left out when printing.
STATUS_PREFIX = "BACKGROUND_TRANSFER_STATUS_"


class Stubs(NamedTuple):
    """The generated message (``pb2``) and service (``pb2_grpc``) modules."""

    pb2: ModuleType
    pb2_grpc: ModuleType


def load_stubs(proto_dir: Path) -> Stubs:
    """Compile the contract in ``proto_dir`` to Python and import the generated modules.

    The code is generated into a temporary directory that is removed again once the modules are
    imported (they then live in memory).
    """
    proto_path = proto_dir / PROTO_FILE
    if not proto_path.is_file():
        raise RuntimeError(f"proto file not found: {proto_path}")
    # The well-known types (google/protobuf/*.proto) that ship with grpcio-tools.
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="transferd-stubs-") as out_dir:
        exit_code = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={proto_dir}",
                f"--proto_path={well_known}",
                f"--python_out={out_dir}",
                f"--grpc_python_out={out_dir}",
                str(proto_path),
            ]
        )
        if exit_code != 0:
            raise RuntimeError(f"protoc failed on {proto_path} (exit code {exit_code})")
        # The generated service module imports the message module by its package path
        # (backgroundtransfer.v1.backgroundtransfer_pb2), so the output directory must be on
        # sys.path while both are imported.
        sys.path.insert(0, out_dir)
        try:
            module = PROTO_FILE.removesuffix(".proto").replace("/", ".")
            pb2 = importlib.import_module(f"{module}_pb2")
            pb2_grpc = importlib.import_module(f"{module}_pb2_grpc")
        finally:
            sys.path.remove(out_dir)
    return Stubs(pb2, pb2_grpc)


def status_name(pb2: ModuleType, status: int) -> str:
    """Return the short name of a BackgroundTransferStatus value, e.g. ``RUNNING``."""
    try:
        name: str = pb2.BackgroundTransferStatus.Name(status)
    except ValueError:  # a value newer than this contract
        return str(status)
    return name.removeprefix(STATUS_PREFIX)


def format_progress(pb2: ModuleType, progress: Any) -> str:
    """Format one BackgroundDownloadProgress message as a single line."""
    return (
        f"status={status_name(pb2, progress.status)}"
        f" bytes={progress.bytes_received}/{progress.total_bytes_to_receive}"
        f" response_changed={progress.has_response_changed}"
        f" restarted={progress.has_restarted}"
    )


def download(stubs: Stubs, channel: grpc.Channel, args: argparse.Namespace) -> int:
    """Create the download, stream its progress and report the outcome; return the exit code."""
    pb2 = stubs.pb2
    client = stubs.pb2_grpc.BackgroundTransferServiceStub(channel)

    # The bearer token, for a server with --auth-tokens, goes with every call.
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    operation = client.CreateDownload(
        pb2.CreateDownloadRequest(requested_uri=args.url, result_file=args.result_file),
        timeout=args.rpc_timeout,
        metadata=metadata,
    )
    print(f"created guid={operation.guid} result_file={operation.result_file}", flush=True)

    # The stream ends by itself after a terminal status.
    for progress in client.WatchDownload(
        pb2.WatchDownloadRequest(guid=operation.guid), timeout=args.timeout, metadata=metadata
    ):
        print(format_progress(pb2, progress), flush=True)

    # The stored operation is the authority on the outcome, and carries the error if any.
    operation = client.GetDownload(
        pb2.GetDownloadRequest(guid=operation.guid), timeout=args.rpc_timeout, metadata=metadata
    )
    status = operation.progress.status
    print(f"result_file={operation.result_file} status={status_name(pb2, status)}", flush=True)
    if status == pb2.BACKGROUND_TRANSFER_STATUS_ERROR:
        print(f"error: {operation.error.message}", file=sys.stderr)
    return 0 if status == pb2.BACKGROUND_TRANSFER_STATUS_COMPLETED else 1


def read_file(path: str | None) -> bytes | None:
    """Return the bytes of ``path``, or None if no path was given."""
    return Path(path).read_bytes() if path else None


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to ``args.server``: TLS when a CA file is given, plaintext otherwise."""
    if not args.ca_cert:
        return grpc.insecure_channel(args.server)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_file(args.ca_cert),
        private_key=read_file(args.client_key),
        certificate_chain=read_file(args.client_cert),
    )
    options = []
    if args.server_name:
        # The name the server's certificate must carry, when --server names another host.
        options.append(("grpc.ssl_target_name_override", args.server_name))
    return grpc.secure_channel(args.server, credentials, options=options)


def add_tls_args(parser: argparse.ArgumentParser) -> None:
    """The TLS options, each with an environment variable."""
    tls = parser.add_argument_group("TLS (for a server started with --tls-cert)")
    tls.add_argument(
        "--ca-cert",
        default=os.environ.get("TRANSFERD_CA_CERT"),
        metavar="FILE",
        help="connect over TLS, trusting the CA certificates in this PEM file "
        "(env TRANSFERD_CA_CERT; default: plaintext)",
    )
    tls.add_argument(
        "--client-cert",
        default=os.environ.get("TRANSFERD_CLIENT_CERT"),
        metavar="FILE",
        help="PEM client certificate, for a server with --tls-client-ca "
        "(env TRANSFERD_CLIENT_CERT)",
    )
    tls.add_argument(
        "--client-key",
        default=os.environ.get("TRANSFERD_CLIENT_KEY"),
        metavar="FILE",
        help="PEM private key of --client-cert (env TRANSFERD_CLIENT_KEY)",
    )
    tls.add_argument(
        "--server-name",
        default=os.environ.get("TRANSFERD_SERVER_NAME"),
        metavar="NAME",
        help="name the server's certificate must carry, if not the host of --server "
        "(env TRANSFERD_SERVER_NAME)",
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description="Download a URL through transferd and print its progress.",
    )
    parser.add_argument("url", help="absolute http:// or https:// URL to download")
    parser.add_argument(
        "--server",
        default="127.0.0.1:50051",
        help="transferd address as HOST:PORT (default: %(default)s)",
    )
    parser.add_argument(
        "--result-file",
        default="",
        metavar="NAME",
        help="path of the result, relative to the server's download directory "
        "(default: the server picks a name from the URL)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the server to accept the connection (default: %(default)s)",
    )
    parser.add_argument(
        "--rpc-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="deadline of each unary call (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up watching after this long; the download goes on (default: no limit)",
    )
    parser.add_argument(
        "--proto-dir",
        type=Path,
        default=DEFAULT_PROTO_DIR,
        help="root of the .proto files (default: the repository's proto/)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("TRANSFERD_TOKEN"),
        help="bearer token, for a server started with --auth-tokens (env TRANSFERD_TOKEN; "
        "prefer the variable: arguments show in the process list)",
    )
    add_tls_args(parser)
    args = parser.parse_args(argv)
    if (args.client_cert is None) != (args.client_key is None):
        parser.error("--client-cert and --client-key go together")
    if (args.client_cert or args.server_name) and not args.ca_cert:
        parser.error("--client-cert and --server-name need --ca-cert")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example; return the process exit code."""
    args = parse_args(argv)
    try:
        stubs = load_stubs(args.proto_dir)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    try:
        channel = open_channel(args)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=args.connect_timeout)
        except grpc.FutureTimeoutError:
            print(
                f"error: could not connect to {args.server} within {args.connect_timeout:g}s",
                file=sys.stderr,
            )
            return 1
        try:
            return download(stubs, channel, args)
        except grpc.RpcError as exc:
            # Every RpcError raised by a call is also a grpc.Call with a code and details.
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # Only the client stops: a created download goes on in the server.
        print("interrupted", file=sys.stderr)
        sys.exit(130)
