//! The daemon's side of the OTLP receiver: admitting SDK requests (within the exporter's room
//! and a bounded hand-off queue), and giving SDK telemetry the same resource attributes sonde
//! gives the sending process's eBPF spans.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc::{Receiver as QueueReceiver, SyncSender, TrySendError, sync_channel},
    },
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    },
    common::v1::any_value::Value,
    resource::v1::Resource,
};
use sonde_otlp_export::{Exporter, Reservation, Signal};
use sonde_otlp_receive::{Admit, Peer, Sink};

/// A request from an SDK, on its way to the capture thread (which knows the processes).
pub enum SdkRequest {
    Traces(SocketAddr, ExportTraceServiceRequest),
    Metrics(SocketAddr, ExportMetricsServiceRequest),
    Logs(SocketAddr, ExportLogsServiceRequest),
}

/// A request, the bytes it counts against the hand-off queue's bound, and the exporter room
/// reserved for it before the receiver answered OK (send it with `send_reserved`).
pub struct Queued {
    pub request: SdkRequest,
    pub bytes: usize,
    pub reservation: Reservation,
}

/// Bytes of SDK requests between the receiver and the capture thread. The capture thread
/// calls [`QueuedBytes::release`] once it has forwarded a request.
#[derive(Clone, Default)]
pub struct QueuedBytes(Arc<AtomicUsize>);

impl QueuedBytes {
    pub fn release(&self, bytes: usize) {
        self.0.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Heap bytes a decoded request takes per byte of its encoding (strings, vectors, structs).
const DECODED_MEMORY_FACTOR: usize = 8;

/// How long an overloaded client is asked to wait.
const RETRY_AFTER: Duration = Duration::from_secs(2);

pub struct ReceiverSink {
    queue: SyncSender<Queued>,
    queued: QueuedBytes,
    max_queued_bytes: usize,
    exporter: Exporter,
}

/// The sink for the receiver and the queue the capture thread drains, bounded to
/// `max_queued_bytes` of decoded requests in memory.
pub fn sink(
    exporter: Exporter,
    max_queued_bytes: usize,
) -> (ReceiverSink, QueueReceiver<Queued>, QueuedBytes) {
    let (tx, rx) = sync_channel(4096);
    let queued = QueuedBytes::default();
    let sink = ReceiverSink {
        queue: tx,
        queued: queued.clone(),
        max_queued_bytes,
        exporter,
    };
    (sink, rx, queued)
}

impl ReceiverSink {
    fn admit(&self, encoded_len: usize, request: SdkRequest) -> Admit {
        let overloaded = Admit::Overloaded {
            retry_after: RETRY_AFTER,
        };
        // Reserve the exporter's room before answering OK: accepting what the queue could not
        // take would mean dropping it later. Without room: a retryable refusal.
        let signal = match &request {
            SdkRequest::Traces(..) => Signal::Traces,
            SdkRequest::Metrics(..) => Signal::Metrics,
            SdkRequest::Logs(..) => Signal::Logs,
        };
        let Some(reservation) = self.exporter.reserve(signal, encoded_len) else {
            return overloaded;
        };
        let bytes = encoded_len.saturating_mul(DECODED_MEMORY_FACTOR);
        let before = self.queued.0.fetch_add(bytes, Ordering::AcqRel);
        // One request is always let through when nothing waits, however large.
        if before > 0 && before.saturating_add(bytes) > self.max_queued_bytes {
            self.queued.release(bytes);
            return overloaded;
        }
        match self.queue.try_send(Queued {
            request,
            bytes,
            reservation,
        }) {
            Ok(()) => Admit::Accepted,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.release(bytes);
                overloaded
            }
        }
    }
}

impl Sink for ReceiverSink {
    fn traces(&self, peer: Peer, request: ExportTraceServiceRequest, encoded_len: usize) -> Admit {
        self.admit(encoded_len, SdkRequest::Traces(peer, request))
    }
    fn metrics(
        &self,
        peer: Peer,
        request: ExportMetricsServiceRequest,
        encoded_len: usize,
    ) -> Admit {
        self.admit(encoded_len, SdkRequest::Metrics(peer, request))
    }
    fn logs(&self, peer: Peer, request: ExportLogsServiceRequest, encoded_len: usize) -> Admit {
        self.admit(encoded_len, SdkRequest::Logs(peer, request))
    }
}

/// Adds sonde's attributes for the sending process to an SDK resource. The SDK's own values
/// win, except an SDK default `service.name` (`unknown_service...`), which sonde's resolved
/// name replaces.
pub fn enrich(resource: &mut Option<Resource>, ours: &Resource) {
    let target = resource.get_or_insert_with(Resource::default);
    for attr in &ours.attributes {
        match target.attributes.iter_mut().find(|a| a.key == attr.key) {
            Some(existing) if attr.key == "service.name" => {
                let default = matches!(existing.value.as_ref().and_then(|v| v.value.as_ref()), Some(Value::StringValue(s)) if s.starts_with("unknown_service"));
                if default {
                    existing.value = attr.value.clone();
                }
            }
            Some(_) => {}
            None => target.attributes.push(attr.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};

    use super::*;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn get<'a>(r: &'a Resource, k: &str) -> Option<&'a str> {
        r.attributes.iter().find(|a| a.key == k).and_then(|a| {
            match a.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.as_str()),
                _ => None,
            }
        })
    }

    #[test]
    fn sdk_values_win_and_missing_ones_are_added() {
        let ours = Resource {
            attributes: vec![
                kv("service.name", "gunicorn"),
                kv("host.name", "node-1"),
                kv("container.id", "abc"),
            ],
            ..Default::default()
        };
        let mut sdk = Some(Resource {
            attributes: vec![kv("service.name", "shop"), kv("host.name", "pod-xyz")],
            ..Default::default()
        });
        enrich(&mut sdk, &ours);
        let r = sdk.unwrap();
        assert_eq!(get(&r, "service.name"), Some("shop"));
        assert_eq!(get(&r, "host.name"), Some("pod-xyz"));
        assert_eq!(get(&r, "container.id"), Some("abc"));

        let mut sdk = Some(Resource {
            attributes: vec![kv("service.name", "unknown_service:python3")],
            ..Default::default()
        });
        enrich(&mut sdk, &ours);
        assert_eq!(get(sdk.as_ref().unwrap(), "service.name"), Some("gunicorn"));
        let mut none = None;
        enrich(&mut none, &ours);
        assert_eq!(none.unwrap().attributes.len(), 3);
    }
}
