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


def setup_in_code(protocol, endpoint):
    """The SDK as a new user sets it up in code: a TracerProvider with a BatchSpanProcessor at
    its defaults (5 s schedule delay) and an exporter given its endpoint as an argument.

    Enabled by SONDE_TEST_SDK_IN_CODE=grpc|http with SONDE_TEST_SDK_ENDPOINT=127.0.0.1:<port>;
    the harness sets no OTEL_* variable in this mode, so nothing in the process environment
    tells sonde that this process exports to it.
    """
    from opentelemetry import trace
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True)
    elif protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=f"http://{endpoint}/v1/traces")
    else:
        raise ValueError(f"SONDE_TEST_SDK_IN_CODE must be grpc or http, not {protocol!r}")
    provider = TracerProvider(resource=Resource.create({"service.name": "djangoapp-in-code"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    DjangoInstrumentor().instrument()
    return provider


def from_environment():
    """The provider the environment asks for (None: the app stays uninstrumented)."""
    protocol = os.environ.get("SONDE_TEST_OTEL", "")
    if protocol:
        return setup(protocol)
    in_code = os.environ.get("SONDE_TEST_SDK_IN_CODE", "")
    if in_code:
        return setup_in_code(in_code, os.environ["SONDE_TEST_SDK_ENDPOINT"])
    return None
