//! OTLP/JSON decoding: the JSON body is parsed into a `serde_json::Value`, normalised, then
//! handed to the `with-serde` derives of `opentelemetry-proto`.
//!
//! Normalisation makes the derives accept what the OTLP/JSON spec allows but they do not:
//! snake_case field names (the spec says receivers should accept them), enum values given as
//! names (`"SPAN_KIND_SERVER"`), and `null` meaning "field absent". Every object key in an OTLP
//! body is a field name (attribute keys are values of a `key` field), so renaming keys is safe.

use serde_json::{Map, Value};

/// Nesting depth refused before normalising; serde_json itself stops at 128 while parsing.
const MAX_DEPTH: usize = 256;

/// Parses and normalises an OTLP/JSON body into `T`.
///
/// Fast path: when normalising would change nothing, the body goes straight to the derives (no
/// intermediate `Value`, about three times faster); if they refuse it the normalising path
/// decides and reports. The scan matters: the derives `flatten` the oneofs (metric data, point
/// values), and serde turns an error inside a flattened `Option` into `None`, silently.
pub fn from_slice<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let is_object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if is_object
        && !needs_normalizing(body)
        && let Ok(parsed) = serde_json::from_slice::<T>(body)
    {
        return Ok(parsed);
    }
    let mut value: Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    if !value.is_object() {
        return Err("invalid OTLP/JSON: the body must be a JSON object".to_owned());
    }
    normalize(&mut value, 0)?;
    serde_json::from_value(value).map_err(|e| format!("invalid OTLP/JSON: {e}"))
}

fn normalize(value: &mut Value, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("invalid OTLP/JSON: nested too deeply".to_owned());
    }
    match value {
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('_')) {
                let old = std::mem::take(map);
                let mut renamed = Map::with_capacity(old.len());
                for (key, val) in old {
                    let key = if key.contains('_') {
                        snake_to_camel(&key)
                    } else {
                        key
                    };
                    // A camelCase spelling wins over a snake_case duplicate.
                    renamed.entry(key).or_insert(val);
                }
                *map = renamed;
            }
            map.retain(|_, v| !v.is_null());
            for (key, val) in map.iter_mut() {
                if let Value::String(name) = val
                    && let Some(number) = enum_value(key, name)
                {
                    *val = Value::from(number);
                    continue;
                }
                normalize(val, depth.saturating_add(1))?;
            }
        }
        Value::Array(items) => {
            for item in items {
                normalize(item, depth.saturating_add(1))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Whether [`normalize`] could change the body: an object key with `_` (or an escape, which
/// could hide one), a `null`, or an enum field whose value is a string. Scans the tokens
/// without allocating; a string followed by `:` is a key.
fn needs_normalizing(body: &[u8]) -> bool {
    const ENUM_KEYS: [&[u8]; 4] = [
        b"kind",
        b"code",
        b"aggregationTemporality",
        b"severityNumber",
    ];
    let mut i = 0usize;
    while let Some(&b) = body.get(i) {
        i = i.saturating_add(1);
        if b == b'n' {
            // Outside strings, `n` only starts `null`.
            return true;
        }
        if b != b'"' {
            continue;
        }
        let start = i;
        let mut suspicious = false;
        while let Some(&c) = body.get(i) {
            match c {
                b'\\' => {
                    suspicious = true;
                    i = i.saturating_add(2);
                }
                b'"' => break,
                b'_' => {
                    suspicious = true;
                    i = i.saturating_add(1);
                }
                _ => i = i.saturating_add(1),
            }
        }
        let text = body.get(start..i).unwrap_or_default();
        i = i.saturating_add(1);
        let mut rest = body
            .get(i..)
            .unwrap_or_default()
            .iter()
            .filter(|c| !c.is_ascii_whitespace());
        if rest.next() != Some(&b':') {
            continue;
        }
        if suspicious || (ENUM_KEYS.contains(&text) && rest.next() == Some(&b'"')) {
            return true;
        }
    }
    false
}

fn snake_to_camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = !out.is_empty();
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Numeric value of an enum given by name, for the enum-typed fields of OTLP.
fn enum_value(key: &str, name: &str) -> Option<i64> {
    let table: &[&str] = match key {
        "kind" => &[
            "SPAN_KIND_UNSPECIFIED",
            "SPAN_KIND_INTERNAL",
            "SPAN_KIND_SERVER",
            "SPAN_KIND_CLIENT",
            "SPAN_KIND_PRODUCER",
            "SPAN_KIND_CONSUMER",
        ],
        "code" => &["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"],
        "aggregationTemporality" => &[
            "AGGREGATION_TEMPORALITY_UNSPECIFIED",
            "AGGREGATION_TEMPORALITY_DELTA",
            "AGGREGATION_TEMPORALITY_CUMULATIVE",
        ],
        "severityNumber" => &[
            "SEVERITY_NUMBER_UNSPECIFIED",
            "SEVERITY_NUMBER_TRACE",
            "SEVERITY_NUMBER_TRACE2",
            "SEVERITY_NUMBER_TRACE3",
            "SEVERITY_NUMBER_TRACE4",
            "SEVERITY_NUMBER_DEBUG",
            "SEVERITY_NUMBER_DEBUG2",
            "SEVERITY_NUMBER_DEBUG3",
            "SEVERITY_NUMBER_DEBUG4",
            "SEVERITY_NUMBER_INFO",
            "SEVERITY_NUMBER_INFO2",
            "SEVERITY_NUMBER_INFO3",
            "SEVERITY_NUMBER_INFO4",
            "SEVERITY_NUMBER_WARN",
            "SEVERITY_NUMBER_WARN2",
            "SEVERITY_NUMBER_WARN3",
            "SEVERITY_NUMBER_WARN4",
            "SEVERITY_NUMBER_ERROR",
            "SEVERITY_NUMBER_ERROR2",
            "SEVERITY_NUMBER_ERROR3",
            "SEVERITY_NUMBER_ERROR4",
            "SEVERITY_NUMBER_FATAL",
            "SEVERITY_NUMBER_FATAL2",
            "SEVERITY_NUMBER_FATAL3",
            "SEVERITY_NUMBER_FATAL4",
        ],
        _ => return None,
    };
    if let Ok(n) = name.parse::<i64>() {
        return Some(n);
    }
    table
        .iter()
        .position(|n| *n == name)
        .and_then(|i| i64::try_from(i).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_becomes_camel_case() {
        assert_eq!(snake_to_camel("resource_spans"), "resourceSpans");
        assert_eq!(snake_to_camel("start_time_unix_nano"), "startTimeUnixNano");
        assert_eq!(snake_to_camel("_x"), "x");
        assert_eq!(snake_to_camel("name"), "name");
    }

    #[test]
    fn finds_what_needs_normalizing() {
        let plain = br#"{"resourceSpans":[{"key":"user_agent.original","value":"a_b null"},{"kind":2,"x":true}]}"#;
        assert!(!needs_normalizing(plain));
        assert!(needs_normalizing(br#"{"resource_spans":[]}"#));
        assert!(needs_normalizing(br#"{"a": {"trace_id" : "x"}}"#));
        assert!(needs_normalizing(br#"{"trace\u005fid":"x"}"#));
        assert!(needs_normalizing(br#"{"status": null}"#));
        assert!(needs_normalizing(br#"{"kind" : "SPAN_KIND_SERVER"}"#));
        assert!(needs_normalizing(br#"{"aggregationTemporality":"2"}"#));
        assert!(
            !needs_normalizing(br#"{"a":"x\"_\":"}"#),
            "escaped quote inside a value"
        );
        assert!(!needs_normalizing(b"{\"unterminated_"));
    }

    #[test]
    fn enum_names_inside_metric_data_are_not_lost() {
        type Req = opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        let body = br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"h","histogram":
            {"aggregationTemporality":"AGGREGATION_TEMPORALITY_DELTA","dataPoints":[{"count":"3"}]}}]}]}]}"#;
        let req = from_slice::<Req>(body).unwrap();
        let metric = &req.resource_metrics[0].scope_metrics[0].metrics[0];
        assert!(metric.data.is_some(), "histogram kept: {metric:?}");
    }

    #[test]
    fn enum_names_become_numbers() {
        let mut v = serde_json::json!({"kind": "SPAN_KIND_CLIENT", "status": {"code": "STATUS_CODE_ERROR"}, "name": "SPAN_KIND_CLIENT"});
        normalize(&mut v, 0).unwrap();
        assert_eq!(v["kind"], 3);
        assert_eq!(v["status"]["code"], 2);
        assert_eq!(v["name"], "SPAN_KIND_CLIENT");
    }

    #[test]
    fn rejects_non_objects_and_garbage() {
        type Req = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        assert!(from_slice::<Req>(b"[]").is_err());
        assert!(from_slice::<Req>(b"{\"resourceSpans\": 5}").is_err());
        assert!(from_slice::<Req>(b"{\"resourceSpans\": [").is_err());
        assert!(from_slice::<Req>(b"{}").unwrap().resource_spans.is_empty());
    }
}
