"""A minimal OTLP trace receiver for the end-to-end tests (ours, test-only).

Over OTLP/HTTP (`http`, the default): accepts POST /v1/traces with `application/x-protobuf`
bodies. Over OTLP/gRPC (`grpc`): serves the official `TraceService/Export` method. Either way
the request is decoded with the official OpenTelemetry proto definitions (PyPI
`opentelemetry-proto`, with `grpcio` for gRPC, pinned in tests/moto_harness/requirements.txt),
and one JSON line per span is appended to OUT_FILE:
{"service": ..., "name": ..., "trace_id": ..., "span_id": ..., "parent_span_id": ...,
 "attributes": {...}, "protocol": "http" | "grpc"}.

Usage: python receiver.py PORT OUT_FILE [http|grpc]   (binds 127.0.0.1)
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

OUT = sys.argv[2]
PROTOCOL = sys.argv[3] if len(sys.argv) > 3 else "http"


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


class Handler(BaseHTTPRequestHandler):
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


def serve_grpc(port):
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # noqa: N802 (the proto's name)
            write(request, "grpc")
            return ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        sys.exit(f"cannot bind 127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if PROTOCOL == "grpc":
    serve_grpc(int(sys.argv[1]))
elif PROTOCOL == "http":
    HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
else:
    sys.exit(f"unknown protocol {PROTOCOL!r}: use http or grpc")
