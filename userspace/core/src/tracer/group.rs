//! Grouping for export: spans under their process's resource, one `ResourceSpans` per pid.
//!
//! Must never: change a span.
use opentelemetry_proto::tonic::{
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans},
};
use rustc_hash::FxHashMap as HashMap;
use sonde_span::sonde_scope;

/// Groups `(pid, span)`s per pid under `resource(pid)`, keeping each process's span order.
pub fn group<S>(
    spans: Vec<(u32, S)>,
    mut resource: impl FnMut(u32) -> Resource,
) -> Vec<(Resource, Vec<S>)> {
    // Sized first, so no per-pid vector grows (and copies its spans) while filling.
    let mut counts: HashMap<u32, usize> = HashMap::default();
    for (pid, _) in &spans {
        *counts.entry(*pid).or_default() += 1;
    }
    let mut by_pid: HashMap<u32, Vec<S>> = counts
        .into_iter()
        .map(|(pid, n)| (pid, Vec::with_capacity(n)))
        .collect();
    for (pid, span) in spans {
        by_pid.entry(pid).or_default().push(span);
    }
    by_pid
        .into_iter()
        .map(|(pid, spans)| (resource(pid), spans))
        .collect()
}

/// One process's OTLP spans as a `ResourceSpans` with sonde as the scope.
pub fn resource_spans(
    resource: Resource,
    spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>,
) -> ResourceSpans {
    ResourceSpans {
        resource: Some(resource),
        scope_spans: vec![ScopeSpans {
            scope: Some(sonde_scope()),
            spans,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::Span;

    #[test]
    fn one_resource_per_process_keeping_span_order() {
        let span = |name: &str| Span {
            name: name.into(),
            ..Default::default()
        };
        let out: Vec<_> = group(
            vec![(1, span("a")), (2, span("b")), (1, span("c"))],
            |pid| Resource {
                dropped_attributes_count: pid,
                ..Default::default()
            },
        )
        .into_iter()
        .map(|(resource, spans)| resource_spans(resource, spans))
        .collect();
        assert_eq!(out.len(), 2);
        for rs in out {
            let pid = rs.resource.map(|r| r.dropped_attributes_count);
            let names: Vec<_> = rs.scope_spans[0]
                .spans
                .iter()
                .map(|s| s.name.clone())
                .collect();
            match pid {
                Some(1) => assert_eq!(names, ["a", "c"]),
                Some(2) => assert_eq!(names, ["b"]),
                other => panic!("{other:?}"),
            }
            assert_eq!(
                rs.scope_spans[0].scope.as_ref().map(|s| s.name.as_str()),
                Some("sonde")
            );
        }
    }
}
