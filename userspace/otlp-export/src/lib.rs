//! OTLP exporter: bounded queue, batching, retries, gRPC/HTTP/stdout outputs.
