//! Grouping for export: spans under their process's resource, one `ResourceSpans` per pid.
//!
//! Must never: change a span.
use opentelemetry_proto::tonic::{
    common::v1::InstrumentationScope,
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use rustc_hash::FxHashMap as HashMap;

/// Groups `(pid, span)`s per pid under `resource(pid)`, with sonde as the scope.
pub fn group(
    spans: Vec<(u32, Span)>,
    mut resource: impl FnMut(u32) -> Resource,
) -> Vec<ResourceSpans> {
    // Sized first, so no per-pid vector grows (and copies its spans) while filling.
    let mut counts: HashMap<u32, usize> = HashMap::default();
    for (pid, _) in &spans {
        *counts.entry(*pid).or_default() += 1;
    }
    let mut by_pid: HashMap<u32, Vec<Span>> = counts
        .into_iter()
        .map(|(pid, n)| (pid, Vec::with_capacity(n)))
        .collect();
    for (pid, span) in spans {
        by_pid.entry(pid).or_default().push(span);
    }
    let mut out = Vec::with_capacity(by_pid.len());
    for (pid, spans) in by_pid {
        out.push(ResourceSpans {
            resource: Some(resource(pid)),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "sonde".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_resource_per_process_keeping_span_order() {
        let span = |name: &str| Span {
            name: name.into(),
            ..Default::default()
        };
        let out = group(
            vec![(1, span("a")), (2, span("b")), (1, span("c"))],
            |pid| Resource {
                dropped_attributes_count: pid,
                ..Default::default()
            },
        );
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
