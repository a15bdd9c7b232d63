//! PostgreSQL operations to CLIENT spans with the database semantic conventions. The query
//! text arrives already sanitized by `sonde-postgres`: literals never reach this module.
use sonde_postgres::Operation;

use super::{
    context::SpanContext,
    http::Endpoints,
    span::{Kind, Outcome, SpanParts, int_attr, str_attr},
};
use crate::clock::Clock;

/// PostgreSQL's span mapping for the registry: every query is a CLIENT span (the server's
/// side is never detected).
impl crate::protocols::SpanMapping for sonde_postgres::Postgres {
    fn span_parts(
        q: &Box<sonde_postgres::Query>,
        ctx: SpanContext,
        at: &crate::protocols::MapContext<'_>,
    ) -> SpanParts {
        client_span(
            &q.operation,
            q.database.as_deref(),
            at.endpoints,
            ctx,
            at.clock,
            at.now_ns,
        )
    }
}

pub fn client_span(
    op: &Operation,
    database: Option<&str>,
    conn: Endpoints,
    ctx: SpanContext,
    clock: &Clock,
    fallback_end_ns: u64,
) -> SpanParts {
    let mut attrs = Vec::with_capacity(12);
    attrs.push(str_attr("db.system.name", "postgresql"));
    if let Some(db) = database {
        attrs.push(str_attr("db.namespace", db.to_owned()));
    }
    attrs.push(str_attr("db.query.text", op.query_text.clone()));
    attrs.push(str_attr("db.query.summary", op.summary.clone()));
    if let Some(name) = &op.operation_name {
        attrs.push(str_attr("db.operation.name", name.clone()));
    }
    if let Some(coll) = &op.collection_name {
        attrs.push(str_attr("db.collection.name", coll.clone()));
    }
    if let Some(rows) = op.returned_rows {
        attrs.push(int_attr(
            "db.response.returned_rows",
            i64::try_from(rows).unwrap_or(i64::MAX),
        ));
    }
    if let Some(remote) = conn.remote {
        let address = super::intern::address(remote.ip());
        attrs.push(str_attr("server.address", address.clone()));
        attrs.push(int_attr("server.port", i64::from(remote.port())));
        attrs.push(str_attr("network.peer.address", address));
        attrs.push(int_attr("network.peer.port", i64::from(remote.port())));
    }
    let outcome = match &op.error {
        Some(err) => {
            attrs.push(str_attr("db.response.status_code", err.sqlstate.clone()));
            attrs.push(str_attr("error.type", err.sqlstate.clone()));
            Outcome::Error(String::new())
        }
        None => Outcome::Unset,
    };
    if op.truncated {
        attrs.push(str_attr("sonde.capture.truncated", "true"));
    }
    let end = if op.last.ts_ns >= op.first.ts_ns {
        op.last.ts_ns
    } else {
        fallback_end_ns
    };
    SpanParts {
        ctx,
        name: if op.summary.is_empty() {
            "postgresql".into()
        } else {
            op.summary.clone().into()
        },
        kind: Kind::Client,
        start_unix_ns: clock.to_unix_ns(op.first.ts_ns),
        end_unix_ns: clock.to_unix_ns(end),
        attributes: attrs,
        outcome,
    }
}
