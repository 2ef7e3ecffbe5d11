"""A minimal OTLP trace receiver for the end-to-end tests (ours, test-only).

Over OTLP/HTTP (`http`, the default): accepts POST /v1/traces with `application/x-protobuf`
bodies. Over OTLP/gRPC (`grpc`): serves the official `TraceService/Export` method. Either way
the request is decoded with the official OpenTelemetry proto definitions (PyPI
`opentelemetry-proto`, with `grpcio` for gRPC, pinned in tests/moto_harness/requirements.txt),
and one JSON line per span is appended to OUT_FILE:
{"service": ..., "name": ..., "trace_id": ..., "span_id": ..., "parent_span_id": ...,
 "attributes": {...}, "protocol": "http" | "grpc"}.

Usage: python receiver.py OUT_FILE [http|grpc] [--port PORT] [--port-file PATH]
Binds 127.0.0.1 on PORT (default 0: any free port) and, once serving, writes the bound port to
PATH (a temporary file renamed over it) and prints it. Over HTTP, `GET /ready` answers 200; over
gRPC the port is reported only after a real (empty) Export to itself was answered.
"""

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

ARGS = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ARGS.add_argument("out")
ARGS.add_argument("protocol", nargs="?", default="http", choices=["http", "grpc"])
ARGS.add_argument("--port", type=int, default=0)
ARGS.add_argument("--port-file")
ARGS = ARGS.parse_args()
OUT = ARGS.out


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def write(request, protocol):
    with open(OUT, "a", encoding="utf-8") as out:
        for resource_spans in request.resource_spans:
            resource = {kv.key: value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    out.write(json.dumps({
                        "service": resource.get("service.name"),
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "attributes": {kv.key: value(kv.value) for kv in span.attributes},
                        "protocol": protocol,
                    }) + "\n")


def serving(port):
    """Reports the bound port: printed, and written to --port-file atomically."""
    if ARGS.port_file:
        temporary = f"{ARGS.port_file}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(f"{port}\n")
        os.replace(temporary, ARGS.port_file)
    print(f"receiver: OTLP/{ARGS.protocol} on 127.0.0.1:{port}", flush=True)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        status = 200 if self.path == "/ready" else 404
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        write(request, "http")
        payload = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def serve_grpc():
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # noqa: N802 (the proto's name)
            write(request, "grpc")
            return ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    port = server.add_insecure_port(f"127.0.0.1:{ARGS.port}")
    if port == 0:
        sys.exit(f"cannot bind 127.0.0.1:{ARGS.port}")
    server.start()
    # Ready means answering: one real (empty) Export to itself before the port is reported.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        trace_service_pb2_grpc.TraceServiceStub(channel).Export(ExportTraceServiceRequest(), timeout=10)
    serving(port)
    server.wait_for_termination()


def serve_http():
    server = HTTPServer(("127.0.0.1", ARGS.port), Handler)
    serving(server.server_address[1])
    server.serve_forever()


if ARGS.protocol == "grpc":
    serve_grpc()
else:
    serve_http()
