//! OTLP receiver: gRPC and HTTP servers answering per the OTLP specification.
