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
pub fn from_slice<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
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
