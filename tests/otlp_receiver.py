"""A tiny OTLP/HTTP (protobuf) receiver for tests: it keeps every span and metric name posted
to it (decoded with ``opentelemetry.proto``)."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class OtlpReceiver:
    """A tiny OTLP/HTTP (protobuf) receiver: keeps every span and metric name posted to it."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.metrics: set[str] = set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path == "/v1/traces":
                    receiver._traces(body)
                elif self.path == "/v1/metrics":
                    receiver._metrics(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _traces(self, body: bytes) -> None:
        req = ExportTraceServiceRequest.FromString(body)
        out = []
        for rs in req.resource_spans:
            res = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out.append(
                        {
                            "name": s.name,
                            "trace": s.trace_id.hex(),
                            "span": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(),
                            "links": [(lk.trace_id.hex(), lk.span_id.hex()) for lk in s.links],
                            "component": res.get("onramp.component"),
                            "service": res.get("service.name"),
                            "instance": res.get("service.instance.id"),
                        }
                    )
        with self._lock:
            self.spans += out

    def _metrics(self, body: bytes) -> None:
        req = ExportMetricsServiceRequest.FromString(body)
        names = {
            m.name for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        }
        with self._lock:
            self.metrics |= names

    def wait(self, predicate, timeout_s: float = 30.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                found = [s for s in self.spans if predicate(s)]
            if found:
                return found
            time.sleep(0.2)
        return []

    def close(self) -> None:
        self.server.shutdown()
