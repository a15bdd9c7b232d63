"""Optional OpenTelemetry SDK set-up, enabled only by SONDE_TEST_OTEL=grpc|http.

The app is uninstrumented by default: nothing here is imported unless the variable is set.
Called once per process after gunicorn forked the worker (the WSGI module is imported in each
worker because the harness never uses --preload), so the exporter's thread lives in the worker.
"""
import os


def setup(protocol):
    from opentelemetry import trace
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        raise ValueError(f"SONDE_TEST_OTEL must be grpc or http, not {protocol!r}")

    delay_ms = int(os.environ.get("SONDE_TEST_OTEL_DELAY_MS", "1000"))
    provider = TracerProvider(resource=Resource.create({}))
    # The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and the other OTEL_* variables) itself.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=delay_ms))
    trace.set_tracer_provider(provider)
    DjangoInstrumentor().instrument()
    if os.environ.get("SONDE_TEST_OTEL_PSYCOPG2") == "1":
        from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor

        Psycopg2Instrumentor().instrument(skip_dep_check=True)
    return provider


def shutdown(provider):
    """Flushes the batch processor (called from gunicorn's worker_exit hook)."""
    if provider is not None:
        provider.shutdown()
