//! Kubernetes events as OTLP log records (the shape of the OpenTelemetry Collector's
//! k8sevents receiver, REFERENCE.md), and the cluster-wide watcher that exports each event
//! once: events that happened before sonde started are not re-exported, nor is an event a
//! watch restart lists again unchanged.
use std::collections::{HashSet, VecDeque};

use futures::StreamExt;
use k8s_openapi::{api::core::v1::Event, chrono};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    resource::v1::Resource,
};

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn push_str(out: &mut Vec<KeyValue>, key: &str, v: Option<&str>) {
    if let Some(v) = v.filter(|v| !v.is_empty()) {
        out.push(kv(key, Value::StringValue(v.to_owned())));
    }
}

fn nanos(t: chrono::DateTime<chrono::Utc>) -> u64 {
    t.timestamp_nanos_opt().map_or(0, |n| n.max(0) as u64)
}

/// When the event last happened (series, lastTimestamp, eventTime, firstTimestamp, creation).
pub fn event_time(ev: &Event) -> Option<chrono::DateTime<chrono::Utc>> {
    ev.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or_else(|| ev.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| ev.event_time.as_ref().map(|t| t.0))
        .or_else(|| ev.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| ev.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// One event as one OTLP log record under its own resource.
pub fn to_log(ev: &Event, observed: chrono::DateTime<chrono::Utc>) -> ResourceLogs {
    let obj = &ev.involved_object;
    let mut resource = Vec::new();
    push_str(
        &mut resource,
        "k8s.node.name",
        ev.source
            .as_ref()
            .and_then(|s| s.host.as_deref())
            .or(ev.reporting_instance.as_deref()),
    );
    push_str(&mut resource, "k8s.object.kind", obj.kind.as_deref());
    push_str(&mut resource, "k8s.object.name", obj.name.as_deref());
    push_str(&mut resource, "k8s.object.uid", obj.uid.as_deref());
    push_str(
        &mut resource,
        "k8s.object.fieldpath",
        obj.field_path.as_deref(),
    );
    push_str(
        &mut resource,
        "k8s.object.api_version",
        obj.api_version.as_deref(),
    );
    push_str(
        &mut resource,
        "k8s.object.resource_version",
        obj.resource_version.as_deref(),
    );
    let mut attributes = Vec::new();
    push_str(&mut attributes, "k8s.event.reason", ev.reason.as_deref());
    push_str(&mut attributes, "k8s.event.action", ev.action.as_deref());
    push_str(
        &mut attributes,
        "k8s.event.name",
        ev.metadata.name.as_deref(),
    );
    push_str(&mut attributes, "k8s.event.uid", ev.metadata.uid.as_deref());
    if let Some(count) = ev
        .count
        .or(ev.series.as_ref().map(|s| s.count.unwrap_or(1)))
    {
        attributes.push(kv("k8s.event.count", Value::IntValue(i64::from(count))));
    }
    if let Some(start) = ev
        .first_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| ev.event_time.as_ref().map(|t| t.0))
    {
        push_str(
            &mut attributes,
            "k8s.event.start_time",
            Some(&start.to_rfc3339()),
        );
    }
    push_str(
        &mut attributes,
        "k8s.namespace.name",
        ev.metadata
            .namespace
            .as_deref()
            .or(obj.namespace.as_deref()),
    );
    let (severity_number, severity_text) = match ev.type_.as_deref() {
        Some("Warning") => (SeverityNumber::Warn, "WARN"),
        _ => (SeverityNumber::Info, "INFO"),
    };
    let record = LogRecord {
        time_unix_nano: event_time(ev).map_or(0, nanos),
        observed_time_unix_nano: nanos(observed),
        severity_number: severity_number as i32,
        severity_text: severity_text.into(),
        body: Some(AnyValue {
            value: Some(Value::StringValue(ev.message.clone().unwrap_or_default())),
        }),
        attributes,
        ..Default::default()
    };
    ResourceLogs {
        resource: Some(Resource {
            attributes: resource,
            ..Default::default()
        }),
        scope_logs: vec![ScopeLogs {
            scope: Some(InstrumentationScope {
                name: "sonde/k8s-events".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            }),
            log_records: vec![record],
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

/// Decides which watched events to export: only those that happened at or after `start`,
/// each (uid, resourceVersion) once (a watch restart lists every event again).
pub struct EventFilter {
    start: chrono::DateTime<chrono::Utc>,
    seen: HashSet<(String, String)>,
    order: VecDeque<(String, String)>,
}

/// How many exported (uid, resourceVersion) pairs are remembered.
const SEEN_MAX: usize = 65_536;

impl EventFilter {
    pub fn new(start: chrono::DateTime<chrono::Utc>) -> Self {
        Self {
            start,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    pub fn admit(&mut self, ev: &Event) -> bool {
        // Second precision on most timestamps: an event in sonde's starting second counts.
        let start = self.start - chrono::Duration::seconds(1);
        if event_time(ev).is_none_or(|t| t < start) {
            return false;
        }
        let key = (
            ev.metadata.uid.clone().unwrap_or_default(),
            ev.metadata.resource_version.clone().unwrap_or_default(),
        );
        if !self.seen.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > SEEN_MAX
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

/// Watches every namespace's events until the task is dropped, calling `export` with one
/// record per new event. API errors are retried with backoff (logged once per outage).
pub async fn watch(client: Client, export: impl Fn(ResourceLogs) + Send) {
    let mut filter = EventFilter::new(chrono::Utc::now());
    let api: Api<Event> = Api::all(client);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut failing = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(watcher::Event::Apply(ev) | watcher::Event::InitApply(ev)) => {
                failing = false;
                if filter.admit(&ev) {
                    export(to_log(&ev, chrono::Utc::now()));
                }
            }
            Ok(_) => failing = false,
            Err(e) => {
                if !failing {
                    tracing::warn!("Kubernetes events watch: {e}; retrying with backoff");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: serde_json::Value) -> Event {
        serde_json::from_value(json).unwrap()
    }

    fn backoff_event(last: &str, rv: &str) -> Event {
        event(serde_json::json!({
            "metadata": {"name": "shop-1.17a", "namespace": "prod", "uid": "ev-1", "resourceVersion": rv},
            "involvedObject": {"kind": "Pod", "name": "shop-1", "namespace": "prod", "uid": "pod-1",
                "apiVersion": "v1", "resourceVersion": "42", "fieldPath": "spec.containers{web}"},
            "reason": "BackOff", "message": "Back-off restarting failed container", "type": "Warning",
            "count": 3, "firstTimestamp": "2026-11-30T05:00:00Z", "lastTimestamp": last,
            "source": {"component": "kubelet", "host": "node-1"}
        }))
    }

    fn attr<'a>(kvs: &'a [KeyValue], k: &str) -> Option<&'a Value> {
        kvs.iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn event_maps_to_the_k8sevents_shape() {
        let ev = backoff_event("2026-11-30T05:10:00Z", "100");
        let rl = to_log(&ev, chrono::Utc::now());
        let res = &rl.resource.as_ref().unwrap().attributes;
        let s = |v: &str| Some(Value::StringValue(v.into()));
        assert_eq!(attr(res, "k8s.node.name").cloned(), s("node-1"));
        assert_eq!(attr(res, "k8s.object.kind").cloned(), s("Pod"));
        assert_eq!(attr(res, "k8s.object.name").cloned(), s("shop-1"));
        assert_eq!(attr(res, "k8s.object.uid").cloned(), s("pod-1"));
        assert_eq!(
            attr(res, "k8s.object.fieldpath").cloned(),
            s("spec.containers{web}")
        );
        assert_eq!(attr(res, "k8s.object.api_version").cloned(), s("v1"));
        assert_eq!(attr(res, "k8s.object.resource_version").cloned(), s("42"));
        let rec = &rl.scope_logs[0].log_records[0];
        assert_eq!(rec.severity_number, SeverityNumber::Warn as i32);
        assert_eq!(rec.severity_text, "WARN");
        assert_eq!(
            rec.body.as_ref().unwrap().value,
            s("Back-off restarting failed container")
        );
        let a = &rec.attributes;
        assert_eq!(attr(a, "k8s.event.reason").cloned(), s("BackOff"));
        assert_eq!(attr(a, "k8s.event.name").cloned(), s("shop-1.17a"));
        assert_eq!(attr(a, "k8s.event.uid").cloned(), s("ev-1"));
        assert_eq!(
            attr(a, "k8s.event.count").cloned(),
            Some(Value::IntValue(3))
        );
        assert_eq!(
            attr(a, "k8s.event.start_time").cloned(),
            s("2026-11-30T05:00:00+00:00")
        );
        assert_eq!(attr(a, "k8s.namespace.name").cloned(), s("prod"));
        assert_eq!(
            rec.time_unix_nano,
            nanos("2026-11-30T05:10:00Z".parse().unwrap())
        );
    }

    #[test]
    fn normal_is_info() {
        let ev = event(serde_json::json!({
            "metadata": {"name": "x"}, "involvedObject": {}, "type": "Normal", "message": "Pulled"
        }));
        let rec = &to_log(&ev, chrono::Utc::now()).scope_logs[0].log_records[0];
        assert_eq!(rec.severity_number, SeverityNumber::Info as i32);
        assert_eq!(rec.severity_text, "INFO");
    }

    #[test]
    fn old_and_repeated_events_are_not_exported() {
        let mut f = EventFilter::new("2026-11-30T05:05:00Z".parse().unwrap());
        assert!(!f.admit(&backoff_event("2026-11-30T05:01:00Z", "90")));
        assert!(f.admit(&backoff_event("2026-11-30T05:10:00Z", "100")));
        // The same version listed again after a watch restart.
        assert!(!f.admit(&backoff_event("2026-11-30T05:10:00Z", "100")));
        // The event happened again (count and version change): a new record.
        assert!(f.admit(&backoff_event("2026-11-30T05:11:00Z", "101")));
        // No timestamp at all: cannot tell it is new.
        assert!(!f.admit(&event(
            serde_json::json!({"metadata": {}, "involvedObject": {}})
        )));
    }
}
