//! Span -> request measurement: which histogram a finished OTLP span feeds, with which
//! bounded attribute set. Works on sonde's eBPF spans and on SDK spans alike (current
//! semantic conventions, plus the older `http.method` / `db.system` names SDKs still send).
//!
//! Only low-cardinality attributes are copied: never `url.path`, `client.address`,
//! `db.query.text` or any peer port.
use std::borrow::Cow;

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{Span, span::SpanKind},
};

use sonde_span::{AttrValue, OwnSpan};

use crate::Labels;

/// The three request histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestMetric {
    HttpServer,
    HttpClient,
    DbClient,
}

impl RequestMetric {
    pub const ALL: [RequestMetric; 3] = [Self::HttpServer, Self::HttpClient, Self::DbClient];

    /// OpenTelemetry name.
    pub fn name(self) -> &'static str {
        match self {
            Self::HttpServer => "http.server.request.duration",
            Self::HttpClient => "http.client.request.duration",
            Self::DbClient => "db.client.operation.duration",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::HttpServer => "Duration of HTTP server requests.",
            Self::HttpClient => "Duration of HTTP client requests.",
            Self::DbClient => "Duration of database client operations.",
        }
    }

    /// Explicit bucket bounds (semantic-convention advice; HTTP and DB differ).
    pub fn bounds(self) -> &'static [f64] {
        match self {
            Self::HttpServer | Self::HttpClient => HTTP_BUCKETS,
            Self::DbClient => DB_BUCKETS,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

pub const HTTP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
pub const DB_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// One request to count.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub metric: RequestMetric,
    /// Sorted by key; OpenTelemetry attribute names.
    pub attributes: Labels,
    pub seconds: f64,
}

const KNOWN_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY",
];

/// The string form of an attribute value (ints and bools too), if it is a scalar.
pub fn value_string(v: Option<&AnyValue>) -> Option<String> {
    scalar_text(v?).map(Cow::into_owned)
}

/// A scalar attribute value as text, borrowed when it is a string (the common case: a span
/// is measured on every request, and only the values that become labels need copying).
fn scalar_text(v: &AnyValue) -> Option<Cow<'_, str>> {
    Some(match v.value.as_ref()? {
        Value::StringValue(s) => Cow::Borrowed(s.as_str()),
        Value::IntValue(i) => int_text(*i),
        Value::BoolValue(b) => Cow::Owned(b.to_string()),
        Value::DoubleValue(d) => Cow::Owned(d.to_string()),
        _ => return None,
    })
}

fn find<'a>(attrs: &'a [KeyValue], keys: &[&str]) -> Option<&'a AnyValue> {
    keys.iter()
        .find_map(|k| attrs.iter().find(|kv| kv.key == *k))
        .and_then(|kv| kv.value.as_ref())
}

/// Bounded length of any copied attribute value (a route template or an operation name).
const MAX_VALUE_LEN: usize = 128;

fn bounded(s: impl AsRef<str>) -> String {
    let s = s.as_ref();
    let mut cut = s.len().min(MAX_VALUE_LEN);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.get(..cut).unwrap_or_default().to_owned()
}

/// What measuring needs of a finished span, for OTLP spans (from SDKs, or merged) and
/// sonde's own spans alike.
pub trait MeasuredSpan {
    /// The OTLP span kind number.
    fn kind(&self) -> i32;
    /// Start and end, Unix nanoseconds.
    fn times(&self) -> (u64, u64);
    /// How many attributes the span has.
    fn attribute_count(&self) -> usize;
    /// The key of attribute `i`.
    fn key(&self, i: usize) -> &str;
    /// Attribute `i` as text, when it is a scalar and not empty.
    fn text_at(&self, i: usize) -> Option<Cow<'_, str>>;
}

impl MeasuredSpan for Span {
    fn kind(&self) -> i32 {
        self.kind
    }

    fn times(&self) -> (u64, u64) {
        (self.start_time_unix_nano, self.end_time_unix_nano)
    }

    fn attribute_count(&self) -> usize {
        self.attributes.len()
    }

    fn key(&self, i: usize) -> &str {
        self.attributes.get(i).map_or("", |kv| kv.key.as_str())
    }

    fn text_at(&self, i: usize) -> Option<Cow<'_, str>> {
        scalar_text(self.attributes.get(i)?.value.as_ref()?).filter(|t| !t.is_empty())
    }
}

impl MeasuredSpan for OwnSpan {
    fn kind(&self) -> i32 {
        self.kind.otlp()
    }

    fn times(&self) -> (u64, u64) {
        (self.start_unix_ns, self.end())
    }

    fn attribute_count(&self) -> usize {
        self.attributes.len()
    }

    fn key(&self, i: usize) -> &str {
        self.attributes.get(i).map_or("", |a| a.key)
    }

    fn text_at(&self, i: usize) -> Option<Cow<'_, str>> {
        let text = match &self.attributes.get(i)?.value {
            AttrValue::Str(s) => Cow::Borrowed(&**s),
            AttrValue::Int(i) => int_text(*i),
        };
        (!text.is_empty()).then_some(text)
    }
}

/// An attribute measuring reads. Most have an older name too (semantic conventions before
/// 1.26): a span's value under the current name wins over one under the older name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Method,
    DbSystem,
    Error,
    Status,
    Route,
    ServerAddress,
    ServerPort,
    DbOperation,
    DbCollection,
    DbNamespace,
    DbStatus,
}

/// How many fields there are: `DbStatus` is the last variant.
const FIELDS: usize = Field::DbStatus as usize + 1;

/// Which field `key` names, and whether under its older name (1) or the current one (0).
fn field_of(key: &str) -> Option<(Field, usize)> {
    Some(match key {
        "http.request.method" => (Field::Method, 0),
        "http.method" => (Field::Method, 1),
        "db.system.name" => (Field::DbSystem, 0),
        "db.system" => (Field::DbSystem, 1),
        "error.type" => (Field::Error, 0),
        "http.response.status_code" => (Field::Status, 0),
        "http.status_code" => (Field::Status, 1),
        "http.route" => (Field::Route, 0),
        "server.address" => (Field::ServerAddress, 0),
        "net.peer.name" => (Field::ServerAddress, 1),
        "server.port" => (Field::ServerPort, 0),
        "net.peer.port" => (Field::ServerPort, 1),
        "db.operation.name" => (Field::DbOperation, 0),
        "db.operation" => (Field::DbOperation, 1),
        "db.collection.name" => (Field::DbCollection, 0),
        "db.sql.table" => (Field::DbCollection, 1),
        "db.namespace" => (Field::DbNamespace, 0),
        "db.name" => (Field::DbNamespace, 1),
        "db.response.status_code" => (Field::DbStatus, 0),
        _ => return None,
    })
}

/// Where each field is among a span's attributes, found in one pass over them (a scan per
/// field and name was most of measuring's cost).
struct Fields<'s, S: MeasuredSpan> {
    span: &'s S,
    /// Attribute index per field, under its current and its older name (the first attribute
    /// of a repeated key).
    at: [[Option<u16>; 2]; FIELDS],
}

impl<'s, S: MeasuredSpan> Fields<'s, S> {
    fn of(span: &'s S) -> Self {
        let mut at = [[None; 2]; FIELDS];
        for i in 0..span.attribute_count().min(usize::from(u16::MAX)) {
            if let Some((field, older)) = field_of(span.key(i))
                && let Some(slot) = at
                    .get_mut(field as usize)
                    .and_then(|names| names.get_mut(older))
                && slot.is_none()
            {
                *slot = u16::try_from(i).ok();
            }
        }
        Self { span, at }
    }

    /// The field's text: under its current name if the span has that key, else its older one.
    fn text(&self, field: Field) -> Option<Cow<'s, str>> {
        let [current, older] = self.at.get(field as usize)?;
        self.span.text_at(usize::from(current.or(*older)?))
    }
}

/// "100" to "599", back to back: status codes as text without an allocation per span.
const STATUS_TEXT: [u8; 1500] = {
    let mut table = [0u8; 1500];
    let mut i = 0;
    while i < 500 {
        let n = i + 100;
        table[i * 3] = b'0' + (n / 100) as u8;
        table[i * 3 + 1] = b'0' + (n / 10 % 10) as u8;
        table[i * 3 + 2] = b'0' + (n % 10) as u8;
        i += 1;
    }
    table
};

/// An integer as text, borrowed for the status-code range.
fn int_text(i: i64) -> Cow<'static, str> {
    let from_table = (100..600)
        .contains(&i)
        .then(|| (i - 100) as usize * 3)
        .and_then(|at| STATUS_TEXT.get(at..at + 3))
        .and_then(|b| std::str::from_utf8(b).ok());
    match from_table {
        Some(text) => Cow::Borrowed(text),
        None => Cow::Owned(i.to_string()),
    }
}

/// `s` cut to [`MAX_VALUE_LEN`] bytes on a character boundary, still borrowed.
fn bounded_text(s: Cow<'_, str>) -> Cow<'_, str> {
    if s.len() <= MAX_VALUE_LEN {
        return s;
    }
    let mut cut = MAX_VALUE_LEN;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(b.get(..cut).unwrap_or_default()),
        Cow::Owned(mut o) => {
            o.truncate(cut);
            Cow::Owned(o)
        }
    }
}

/// What a finished span counts as, if anything (internal spans and spans of other kinds or
/// protocols count as nothing).
pub fn measure(span: &impl MeasuredSpan) -> Option<Measurement> {
    measure_ref(span).map(MeasurementRef::into_owned)
}

/// Most labels a request measurement has (a database call: system, operation, collection,
/// namespace, status and error type); they are held inline, so measuring allocates nothing.
const MAX_REQUEST_LABELS: usize = 6;

/// Labels whose values may borrow from the span measured.
pub type LabelsRef<'a> = smallvec::SmallVec<[(&'static str, Cow<'a, str>); MAX_REQUEST_LABELS]>;

/// A measurement whose label values borrow from its span: the registry copies them only
/// when they make a new series.
#[derive(Clone, Debug, PartialEq)]
pub struct MeasurementRef<'a> {
    pub metric: RequestMetric,
    /// Sorted by key; OpenTelemetry attribute names.
    pub attributes: LabelsRef<'a>,
    pub seconds: f64,
}

impl MeasurementRef<'_> {
    pub fn into_owned(self) -> Measurement {
        Measurement {
            metric: self.metric,
            attributes: owned_labels(&self.attributes),
            seconds: self.seconds,
        }
    }
}

/// Borrowed labels as owned ones.
pub fn owned_labels(labels: &[(&'static str, Cow<'_, str>)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| (Cow::Borrowed(*k), v.clone().into_owned()))
        .collect()
}

/// [`measure`] without copying the label values.
pub fn measure_ref(span: &impl MeasuredSpan) -> Option<MeasurementRef<'_>> {
    let kind = span.kind();
    let fields = Fields::of(span);
    let method = fields.text(Field::Method);
    let db_system = fields.text(Field::DbSystem);
    let metric = if kind == SpanKind::Server as i32 && method.is_some() {
        RequestMetric::HttpServer
    } else if kind == SpanKind::Client as i32 && method.is_some() {
        RequestMetric::HttpClient
    } else if kind == SpanKind::Client as i32 && db_system.is_some() {
        RequestMetric::DbClient
    } else {
        return None;
    };
    let (start, end) = span.times();
    let seconds = end.checked_sub(start)? as f64 / 1e9;
    let mut out = LabelsRef::new();
    let error = fields.text(Field::Error);
    match metric {
        RequestMetric::HttpServer | RequestMetric::HttpClient => {
            let method = method.unwrap_or_default();
            let method = if KNOWN_METHODS.contains(&&*method) {
                method
            } else {
                Cow::Borrowed("_OTHER")
            };
            out.push(("http.request.method", method));
            let status = fields.text(Field::Status);
            let error = error.or_else(|| {
                let code: u16 = status.as_deref()?.parse().ok()?;
                let threshold = if metric == RequestMetric::HttpServer {
                    500
                } else {
                    400
                };
                (code >= threshold).then(|| Cow::Owned(code.to_string()))
            });
            if let Some(s) =
                status.filter(|s| s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit()))
            {
                out.push(("http.response.status_code", s));
            }
            if let Some(e) = error {
                out.push(("error.type", bounded_text(e)));
            }
            if metric == RequestMetric::HttpServer {
                if let Some(r) = fields.text(Field::Route) {
                    out.push(("http.route", bounded_text(r)));
                }
            } else {
                if let Some(a) = fields.text(Field::ServerAddress) {
                    out.push(("server.address", bounded_text(a)));
                }
                if let Some(p) = fields.text(Field::ServerPort) {
                    out.push(("server.port", bounded_text(p)));
                }
            }
        }
        RequestMetric::DbClient => {
            out.push((
                "db.system.name",
                bounded_text(db_system.unwrap_or_default()),
            ));
            for (key, field) in [
                ("db.operation.name", Field::DbOperation),
                ("db.collection.name", Field::DbCollection),
                ("db.namespace", Field::DbNamespace),
                ("db.response.status_code", Field::DbStatus),
            ] {
                if let Some(v) = fields.text(field) {
                    out.push((key, bounded_text(v)));
                }
            }
            if let Some(e) = error {
                out.push(("error.type", bounded_text(e)));
            }
        }
    }
    out.sort();
    Some(MeasurementRef {
        metric,
        attributes: out,
        seconds,
    })
}

/// A process's identity as metric labels: `service.name`, `service.namespace` and every
/// `k8s.*` attribute of its resource (sorted by key).
pub fn identity(resource: Option<&Resource>) -> Labels {
    let mut out = Labels::new();
    let Some(r) = resource else {
        return out;
    };
    for kv in &r.attributes {
        let wanted =
            kv.key == "service.name" || kv.key == "service.namespace" || kv.key.starts_with("k8s.");
        if wanted && let Some(v) = value_string(kv.value.as_ref()) {
            out.push((kv.key.clone().into(), bounded(v)));
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// `process.pid` of a resource, if present.
pub fn pid(resource: Option<&Resource>) -> Option<u32> {
    let v = find(&resource?.attributes, &["process.pid"])?;
    match v.value.as_ref()? {
        Value::IntValue(i) => u32::try_from(*i).ok(),
        Value::StringValue(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }
    fn i(k: &str, v: i64) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::IntValue(v)),
            }),
            ..Default::default()
        }
    }
    fn span(kind: SpanKind, attrs: Vec<KeyValue>, ms: u64) -> Span {
        Span {
            kind: kind as i32,
            attributes: attrs,
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 1_000_000_000 + ms * 1_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn server_span_keeps_only_bounded_attributes() {
        let m = measure(&span(
            SpanKind::Server,
            vec![
                s("http.request.method", "GET"),
                i("http.response.status_code", 503),
                s("error.type", "503"),
                s("http.route", "/users/{id}"),
                s("url.path", "/users/42"),
                s("client.address", "10.0.0.1"),
                i("network.peer.port", 5555),
                s("server.address", "example"),
            ],
            120,
        ))
        .unwrap();
        assert_eq!(m.metric, RequestMetric::HttpServer);
        assert!((m.seconds - 0.12).abs() < 1e-9);
        let keys: Vec<_> = m.attributes.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(
            keys,
            [
                "error.type",
                "http.request.method",
                "http.response.status_code",
                "http.route"
            ]
        );
    }

    #[test]
    fn old_sdk_names_and_odd_methods_are_normalised() {
        let m = measure(&span(
            SpanKind::Server,
            vec![s("http.method", "BREW"), i("http.status_code", 500)],
            1,
        ))
        .unwrap();
        assert_eq!(
            m.attributes,
            vec![
                ("error.type".into(), "500".into()),
                ("http.request.method".into(), "_OTHER".into()),
                ("http.response.status_code".into(), "500".into()),
            ]
        );
    }

    /// The current name wins wherever it sits among the attributes; an older name counts
    /// only alone; a repeated key counts at its first place; an empty current value is not
    /// replaced by the older one (the span said it is empty).
    #[test]
    fn current_names_win_over_older_ones_in_any_order() {
        let m = measure(&span(
            SpanKind::Client,
            vec![
                s("net.peer.name", "old-host"),
                s("http.method", "PUT"),
                s("http.request.method", "GET"),
                s("server.address", "new-host"),
                s("server.address", "repeat"),
                i("net.peer.port", 1),
                s("db.sql.table", "ignored"),
            ],
            1,
        ))
        .unwrap();
        assert_eq!(
            m.attributes,
            vec![
                ("http.request.method".into(), "GET".into()),
                ("server.address".into(), "new-host".into()),
                ("server.port".into(), "1".into()),
            ]
        );
        let m = measure(&span(
            SpanKind::Client,
            vec![
                s("db.system", "postgresql"),
                s("db.name", "old"),
                s("db.namespace", ""),
                s("db.operation", "SELECT"),
            ],
            1,
        ))
        .unwrap();
        assert_eq!(
            m.attributes,
            vec![
                ("db.operation.name".into(), "SELECT".into()),
                ("db.system.name".into(), "postgresql".into()),
            ]
        );
    }

    #[test]
    fn client_and_db_spans() {
        let c = measure(&span(
            SpanKind::Client,
            vec![
                s("http.request.method", "POST"),
                i("http.response.status_code", 404),
                s("server.address", "api"),
                i("server.port", 8080),
                s("url.full", "http://api:8080/x?y"),
            ],
            3,
        ))
        .unwrap();
        assert_eq!(c.metric, RequestMetric::HttpClient);
        assert!(
            c.attributes
                .contains(&("server.port".into(), "8080".into()))
        );
        assert!(c.attributes.contains(&("error.type".into(), "404".into())));
        let d = measure(&span(
            SpanKind::Client,
            vec![
                s("db.system.name", "postgresql"),
                s("db.operation.name", "SELECT"),
                s("db.collection.name", "users"),
                s("db.query.text", "SELECT * FROM users WHERE id = $1"),
                i("server.port", 5432),
                i("network.peer.port", 5432),
            ],
            2,
        ))
        .unwrap();
        assert_eq!(d.metric, RequestMetric::DbClient);
        assert_eq!(d.attributes.len(), 3);
        assert!(measure(&span(SpanKind::Internal, vec![s("http.method", "GET")], 1)).is_none());
        assert!(measure(&span(SpanKind::Client, vec![], 1)).is_none());
    }

    #[test]
    fn integers_read_as_display_writes_them() {
        for i in [
            -1,
            0,
            7,
            99,
            100,
            101,
            200,
            404,
            599,
            600,
            8080,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(int_text(i), i.to_string());
        }
        assert!(matches!(int_text(503), Cow::Borrowed("503")));
    }

    /// sonde's own spans measure as their OTLP conversions do (the daemon measures them
    /// without converting).
    #[test]
    fn own_spans_measure_as_their_otlp_conversion() {
        use sonde_span::{Kind, Outcome, int_attr, str_attr};
        let own = |kind, attributes, end_unix_ns| OwnSpan {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            remote_parent: false,
            name: "x".into(),
            kind,
            start_unix_ns: 1_000_000_000,
            end_unix_ns,
            attributes,
            outcome: Outcome::Unset,
        };
        let cases = [
            own(
                Kind::Server,
                vec![
                    str_attr("http.request.method", "GET"),
                    int_attr("http.response.status_code", 503),
                    str_attr("error.type", "503"),
                    str_attr("http.route", "/users/{id}"),
                    str_attr("url.path", String::from("/users/42")),
                ],
                1_250_000_000,
            ),
            own(
                Kind::Client,
                vec![
                    str_attr("http.request.method", "PURGE"),
                    int_attr("http.response.status_code", 404),
                    str_attr("server.address", "api"),
                    int_attr("server.port", 8080),
                ],
                1_000_000_001,
            ),
            own(
                Kind::Client,
                vec![
                    str_attr("db.system.name", "postgresql"),
                    str_attr("db.operation.name", "SELECT"),
                    str_attr("db.collection.name", "variants"),
                    str_attr("db.namespace", ""),
                ],
                3_000_000_000,
            ),
            // A clock step put the end before the start: measured as zero long.
            own(
                Kind::Server,
                vec![str_attr("http.request.method", "GET")],
                1,
            ),
            own(Kind::Client, vec![str_attr("url.full", "http://x/")], 2),
        ];
        for span in cases {
            let expected = measure(&span.clone().into_otlp());
            assert_eq!(measure(&span), expected, "{span:?}");
        }
    }

    #[test]
    fn identity_takes_service_and_k8s() {
        let r = Resource {
            attributes: vec![
                s("service.name", "api"),
                i("process.pid", 42),
                s("k8s.pod.name", "api-1"),
                s("host.name", "n"),
            ],
            ..Default::default()
        };
        assert_eq!(
            identity(Some(&r)),
            vec![
                ("k8s.pod.name".into(), "api-1".into()),
                ("service.name".into(), "api".into())
            ]
        );
        assert_eq!(pid(Some(&r)), Some(42));
    }
}
