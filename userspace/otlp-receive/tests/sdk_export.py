"""Exports one trace, metrics and a log record with the real OpenTelemetry Python SDK.

Usage: sdk_export.py <grpc|http> <endpoint> <none|gzip> <service-name>
The Rust test (sdk.rs) starts the receiver and asserts what its sink got.
"""
import logging
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

protocol, endpoint, compression, service = sys.argv[1:5]

if protocol == "grpc":
    from grpc import Compression
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

    comp = Compression.Gzip if compression == "gzip" else Compression.NoCompression
    span_exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, compression=comp)
    metric_exporter = OTLPMetricExporter(endpoint=endpoint, insecure=True, compression=comp)
    log_exporter = OTLPLogExporter(endpoint=endpoint, insecure=True, compression=comp)
else:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    comp = Compression.Gzip if compression == "gzip" else Compression.NoCompression
    span_exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", compression=comp)
    metric_exporter = OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", compression=comp)
    log_exporter = OTLPLogExporter(endpoint=f"{endpoint}/v1/logs", compression=comp)

resource = Resource.create({"service.name": service, "deployment.environment": "test"})

# Traces: a server span with a client child.
tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
tracer = tracer_provider.get_tracer("sdk-export-test", "1.2.3")
with tracer.start_as_current_span(
    "POST /checkout",
    kind=SpanKind.SERVER,
    attributes={"http.request.method": "POST", "http.route": "/checkout", "order.id": 42},
):
    with tracer.start_as_current_span("SELECT orders", kind=SpanKind.CLIENT) as child:
        child.set_attribute("db.system.name", "postgresql")
        child.set_status(Status(StatusCode.ERROR, "deadlock"))

# Metrics: a counter and a histogram.
reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=600_000)
meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
meter = meter_provider.get_meter("sdk-export-test")
meter.create_counter("orders").add(3, {"route": "/checkout"})
meter.create_histogram("latency", unit="s").record(0.25)

# Logs through the logging bridge.
logger_provider = LoggerProvider(resource=resource)
logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
log = logging.getLogger("sdk-export-test")
log.propagate = False
log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=logger_provider))
log.warning("hello from python", extra={"user.id": "u1"})

ok = tracer_provider.force_flush(10_000)
meter_provider.force_flush(10_000)
logger_provider.force_flush(10_000)
tracer_provider.shutdown()
meter_provider.shutdown()
logger_provider.shutdown()
print("flushed" if ok else "flush timed out")
