//! Replays byte streams captured from a real PostgreSQL 15 (tests/capture/capture.py) and
//! checks the operations the parser reports.

use sonde_postgres::{Connection, Direction, Event, Operation, Seen};

/// One recorded chunk: direction and bytes.
type Chunk = (Direction, Vec<u8>);

fn load(name: &str) -> Vec<Chunk> {
    let path = format!("{}/tests/fixtures/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (d, h) = l.split_once(' ').unwrap_or_else(|| panic!("bad line {l}"));
            let dir = if d == "F" {
                Direction::Frontend
            } else {
                Direction::Backend
            };
            (
                dir,
                hex::decode(h).unwrap_or_else(|e| panic!("bad hex: {e}")),
            )
        })
        .collect()
}

fn replay(chunks: &[Chunk]) -> Vec<Event> {
    let mut c = Connection::new();
    let mut out = Vec::new();
    for (i, (d, bytes)) in chunks.iter().enumerate() {
        let seen = Seen {
            ts_ns: i as u64,
            tid: 1,
        };
        c.feed(*d, bytes, 0, seen, &mut out);
    }
    c.close(
        Seen {
            ts_ns: 9999,
            tid: 1,
        },
        &mut out,
    );
    out
}

fn ops(events: &[Event]) -> Vec<&Operation> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Operation(op) => Some(op),
            _ => None,
        })
        .collect()
}

fn summary_of(ops: &[&Operation]) -> Vec<String> {
    ops.iter().map(|o| o.summary.clone()).collect()
}

#[test]
fn psycopg2_simple_protocol() {
    let events = replay(&load("psycopg2_simple"));
    assert_eq!(
        events.first(),
        Some(&Event::Startup {
            user: Some("postgres".into()),
            database: Some("shop".into()),
            application_name: Some("capture".into()),
        })
    );
    let ops = ops(&events);
    assert_eq!(
        summary_of(&ops),
        [
            "CREATE TABLE orders",
            "INSERT orders",
            "SELECT orders",
            "INSERT orders",
            "BEGIN UPDATE orders COMMIT",
            "COPY orders",
            "COPY orders",
            "LISTEN",
            "NOTIFY",
            "SELECT",
            "BEGIN",
            "SELECT orders",
            "COMMIT",
        ]
    );
    for (i, op) in ops.iter().enumerate() {
        assert_eq!(op.seq, i as u64);
        assert!(!op.prepared && !op.truncated, "{op:?}");
        assert!(op.first.ts_ns <= op.last.ts_ns);
    }
    let started = events
        .iter()
        .filter(|e| matches!(e, Event::OperationStarted { .. }))
        .count();
    assert_eq!(started, ops.len());

    assert_eq!(
        ops[1].query_text,
        "INSERT INTO orders (customer, total) VALUES (?, ?)"
    );
    assert_eq!(ops[1].command_tag.as_deref(), Some("INSERT 0 2"));
    assert_eq!(ops[1].returned_rows, None);
    assert_eq!(
        ops[2].query_text,
        "SELECT id, customer FROM orders WHERE customer IN (?) ORDER BY id"
    );
    assert_eq!(ops[2].returned_rows, Some(2));
    assert_eq!(ops[2].collection_name.as_deref(), Some("orders"));
    let dup = ops[3]
        .error
        .as_ref()
        .map(|e| (e.sqlstate.as_str(), e.severity.as_str()));
    assert_eq!(dup, Some(("23505", "ERROR")));
    assert_eq!(ops[3].command_tag, None);
    assert_eq!(
        ops[4].query_text,
        "BEGIN; UPDATE orders SET total = total + ? WHERE id = ?; COMMIT"
    );
    assert_eq!(ops[4].command_tag.as_deref(), Some("COMMIT"));
    assert_eq!(ops[4].operation_name, None);
    assert_eq!(ops[4].collection_name.as_deref(), Some("orders"));
    assert_eq!(ops[5].command_tag.as_deref(), Some("COPY 3"));
    assert_eq!(ops[5].returned_rows, Some(3));
    assert_eq!(ops[6].query_text, "COPY orders TO STDOUT");
    assert_eq!(ops[6].returned_rows, Some(5));
    assert_eq!(ops[8].query_text, "NOTIFY events, ?");
    assert!(events.contains(&Event::Notification {
        channel: "events".into()
    }));
    assert_eq!(ops[9].query_text, "SELECT ?/?");
    assert_eq!(
        ops[9].error.as_ref().map(|e| e.sqlstate.as_str()),
        Some("22012")
    );
    assert_eq!(
        ops[11].query_text,
        "SELECT count(*) FROM orders WHERE total > ?"
    );
    assert_eq!(ops[11].returned_rows, Some(1));
}

#[test]
fn psycopg2_ssl_request_answered_n_continues_in_plaintext() {
    let chunks = load("psycopg2_ssl_prefer");
    // The capture really starts with an SSLRequest answered 'N'.
    assert_eq!(
        chunks.first().map(|c| c.1.as_slice()),
        Some(&[0, 0, 0, 8, 4, 210, 22, 47][..])
    );
    assert_eq!(chunks.get(1).map(|c| c.1.as_slice()), Some(&b"N"[..]));
    let events = replay(&chunks);
    assert!(
        matches!(events.first(), Some(Event::Startup { database: Some(d), .. }) if d == "shop")
    );
    assert!(!events.contains(&Event::Encrypted));
    let ops = ops(&events);
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].query_text, "SELECT ?");
    assert_eq!(ops[0].returned_rows, Some(1));
}

#[test]
fn psycopg2_ssl_request_answered_s_is_encrypted_only() {
    let chunks = load("psycopg2_ssl_require");
    assert_eq!(chunks.get(1).map(|c| c.1.as_slice()), Some(&b"S"[..]));
    // TLS records follow in both directions.
    assert_eq!(
        chunks.get(2).map(|c| c.1.get(..2)),
        Some(Some(&[0x16, 0x03][..]))
    );
    assert!(chunks.len() > 6);
    // Fed the ciphertext (not the uprobes' plaintext), the parser gives up.
    assert_eq!(replay(&chunks), vec![Event::TlsStarted, Event::Encrypted]);
}

#[test]
fn psycopg3_extended_protocol_and_pipelines() {
    let events = replay(&load("psycopg3_extended"));
    let ops = ops(&events);
    assert_eq!(
        summary_of(&ops),
        [
            "SELECT orders",
            "SELECT orders",
            "SELECT orders",
            "SELECT missing_table",
            "INSERT orders",
            "UPDATE orders",
            "SELECT orders",
            "SELECT orders",
            "INSERT orders",
            "DELETE orders",
        ]
    );
    assert!(ops.iter().all(|o| o.prepared));
    assert_eq!(
        ops[0].query_text,
        "SELECT customer FROM orders WHERE id = $1"
    );
    assert_eq!(ops[0].returned_rows, Some(1));
    // The named statement is parsed once and executed twice by name.
    assert_eq!(
        ops[1].query_text,
        "SELECT total FROM orders WHERE customer = $1"
    );
    assert_eq!(ops[2].query_text, ops[1].query_text);
    assert_eq!(ops[2].command_tag.as_deref(), Some("SELECT 0"));
    assert_eq!(
        ops[3].error.as_ref().map(|e| e.sqlstate.as_str()),
        Some("42P01")
    );
    // Pipeline: three Executes before one Sync, each its own operation, in order.
    assert_eq!(ops[4].command_tag.as_deref(), Some("INSERT 0 1"));
    assert_eq!(
        ops[5].query_text,
        "UPDATE orders SET total = $1 WHERE customer = $2"
    );
    assert_eq!(ops[5].command_tag.as_deref(), Some("UPDATE 1"));
    assert_eq!(ops[6].returned_rows, Some(1));
    assert!(ops[4..7].iter().all(|o| o.error.is_none() && !o.truncated));
    // Pipeline with an error: the failing INSERT has the error, the DELETE was skipped.
    assert_eq!(ops[7].query_text, "SELECT ? FROM orders WHERE id = $1");
    assert_eq!(ops[7].returned_rows, Some(1));
    assert_eq!(
        ops[8].error.as_ref().map(|e| e.sqlstate.as_str()),
        Some("23505")
    );
    assert!(!ops[8].truncated);
    assert!(ops[9].truncated && ops[9].error.is_none() && ops[9].command_tag.is_none());
    for (i, op) in ops.iter().enumerate() {
        assert_eq!(op.seq, i as u64);
    }
}

/// Operations without timestamps, for comparing different chunkings.
fn normalized(events: &[Event]) -> Vec<Event> {
    events
        .iter()
        .map(|e| match e {
            Event::Operation(op) => Event::Operation(Operation {
                first: Seen::default(),
                last: Seen::default(),
                ..op.clone()
            }),
            Event::OperationStarted { seq, .. } => Event::OperationStarted {
                seq: *seq,
                first: Seen::default(),
            },
            other => other.clone(),
        })
        .collect()
}

const FIXTURES: [&str; 7] = [
    "psycopg2_ssl_require",
    "psycopg2_simple",
    "psycopg2_ssl_prefer",
    "psycopg3_extended",
    "django_psycopg3",
    "django_server_binding",
    "pgbench_prepared",
];

/// Splits each direction's chunk at the given cut points (positions modulo the chunk length).
fn resplit(chunks: &[Chunk], cuts: &[usize]) -> Vec<Chunk> {
    let mut out = Vec::new();
    for (i, (d, bytes)) in chunks.iter().enumerate() {
        let mut points: Vec<usize> = cuts
            .iter()
            .skip(i % cuts.len().max(1))
            .take(3)
            .map(|c| c % (bytes.len() + 1))
            .collect();
        points.sort_unstable();
        let mut at = 0;
        for p in points {
            if p > at {
                out.push((*d, bytes[at..p].to_vec()));
                at = p;
            }
        }
        out.push((*d, bytes[at..].to_vec()));
    }
    out
}

#[test]
fn one_byte_feeds_give_the_same_operations() {
    for name in FIXTURES {
        let chunks = load(name);
        let bytewise: Vec<Chunk> = chunks
            .iter()
            .flat_map(|(d, b)| b.iter().map(move |x| (*d, vec![*x])))
            .collect();
        assert_eq!(
            normalized(&replay(&bytewise)),
            normalized(&replay(&chunks)),
            "{name}"
        );
    }
}

proptest::proptest! {
    #[test]
    fn any_split_gives_the_same_operations(cuts in proptest::collection::vec(0usize..100_000, 1..40)) {
        for name in FIXTURES {
            let chunks = load(name);
            let expected = normalized(&replay(&chunks));
            proptest::prop_assert_eq!(normalized(&replay(&resplit(&chunks, &cuts))), expected);
        }
    }

    #[test]
    fn unsynced_start_anywhere_never_panics(skip in 0usize..40, cuts in proptest::collection::vec(0usize..100_000, 1..10)) {
        let chunks = load("psycopg3_extended");
        let mut c = Connection::new_unsynced();
        let mut out = Vec::new();
        for (d, b) in resplit(&chunks, &cuts).iter().skip(skip) {
            c.feed(*d, b, 0, Seen::default(), &mut out);
        }
        c.close(Seen::default(), &mut out);
        let started = out.iter().filter(|e| matches!(e, Event::OperationStarted { .. })).count();
        let done = out.iter().filter(|e| matches!(e, Event::Operation(_))).count();
        proptest::prop_assert_eq!(started, done);
    }
}

const DJANGO_SUMMARIES: [&str; 16] = [
    "SELECT",
    "INSERT auth_user",
    "SELECT auth_user",
    "SELECT auth_user",
    "SELECT auth_user",
    "SELECT auth_user",
    "UPDATE auth_user",
    "BEGIN",
    "INSERT auth_user",
    "COMMIT",
    "SELECT auth_user",
    "BEGIN",
    "DELETE auth_user_groups",
    "DELETE auth_user_user_permissions",
    "DELETE auth_user",
    "COMMIT",
];

const DJANGO_USER_COLUMNS: &str = "SELECT \"auth_user\".\"id\", \"auth_user\".\"password\", \"auth_user\".\"last_login\", \"auth_user\".\"is_superuser\", \"auth_user\".\"username\", \"auth_user\".\"first_name\", \"auth_user\".\"last_name\", \"auth_user\".\"email\", \"auth_user\".\"is_staff\", \"auth_user\".\"is_active\", \"auth_user\".\"date_joined\" FROM \"auth_user\"";

#[test]
fn django_orm_with_client_side_binding() {
    let events = replay(&load("django_psycopg3"));
    let ops = ops(&events);
    assert_eq!(summary_of(&ops), DJANGO_SUMMARIES);
    assert!(
        ops.iter()
            .all(|o| !o.prepared && !o.truncated && o.error.is_none())
    );
    assert!(ops[1].query_text.ends_with(
        "VALUES (?, NULL, ?, ?, ?, ?, ?, ?, ?, ?::timestamptz) RETURNING \"auth_user\".\"id\""
    ));
    assert_eq!(ops[1].returned_rows, Some(1));
    assert_eq!(
        ops[2].query_text,
        format!(
            "{DJANGO_USER_COLUMNS} WHERE \"auth_user\".\"username\" = ? ORDER BY \"auth_user\".\"id\" ASC LIMIT ?"
        )
    );
    assert_eq!(
        ops[3].query_text,
        format!("{DJANGO_USER_COLUMNS} WHERE \"auth_user\".\"username\" = ? LIMIT ?")
    );
    assert_eq!(
        ops[4].query_text,
        format!("{DJANGO_USER_COLUMNS} WHERE \"auth_user\".\"id\" IN (?)")
    );
    assert_eq!(
        ops[5].query_text,
        "SELECT COUNT(*) AS \"__count\" FROM \"auth_user\""
    );
    assert_eq!(
        ops[6].query_text,
        "UPDATE \"auth_user\" SET \"email\" = ? WHERE \"auth_user\".\"username\" = ?"
    );
    assert_eq!(ops[8].command_tag.as_deref(), Some("INSERT 0 3"));
    assert_eq!(ops[8].returned_rows, Some(3));
    assert_eq!(ops[14].command_tag.as_deref(), Some("DELETE 4"));
    // Nothing the application sent as a value survives.
    let all = format!("{events:?}");
    for value in ["admin", "example.com", "b@example", "admin0"] {
        assert!(!all.contains(value), "{value} leaked");
    }
}

#[test]
fn django_orm_with_server_side_binding() {
    let events = replay(&load("django_server_binding"));
    let ops = ops(&events);
    assert_eq!(summary_of(&ops), DJANGO_SUMMARIES);
    assert!(ops.iter().all(|o| !o.truncated && o.error.is_none()));
    // psycopg sends queries without parameters as simple queries, the rest with Parse/Bind.
    for o in &ops {
        assert_eq!(o.prepared, o.query_text.contains('$'), "{o:?}");
    }
    assert_eq!(ops.iter().filter(|o| o.prepared).count(), 11);
    assert_eq!(
        ops[3].query_text,
        format!("{DJANGO_USER_COLUMNS} WHERE \"auth_user\".\"username\" = $1 LIMIT ?")
    );
    assert_eq!(
        ops[6].query_text,
        "UPDATE \"auth_user\" SET \"email\" = $1 WHERE \"auth_user\".\"username\" = $2"
    );
    assert_eq!(
        ops[14].query_text,
        "DELETE FROM \"auth_user\" WHERE \"auth_user\".\"id\" IN ($1, $2, $3, $4)"
    );
    // Bind parameter values ("sso", "b@example.com") are never kept.
    let all = format!("{events:?}");
    assert!(!all.contains("sso") && !all.contains("example.com"));
}

#[test]
fn pgbench_named_prepared_statements() {
    let events = replay(&load("pgbench_prepared"));
    assert!(matches!(
        events.first(),
        Some(Event::Startup { application_name: Some(a), .. }) if a == "pgbench"
    ));
    let ops = ops(&events);
    let one = [
        "BEGIN",
        "UPDATE pgbench_accounts",
        "SELECT pgbench_accounts",
        "UPDATE pgbench_tellers",
        "UPDATE pgbench_branches",
        "INSERT pgbench_history",
        "END",
    ];
    assert_eq!(summary_of(&ops), [one, one].concat());
    assert!(
        ops.iter()
            .all(|o| o.prepared && !o.truncated && o.error.is_none())
    );
    // The second transaction runs the statements prepared in the first one, by name.
    assert_eq!(
        ops[8].query_text,
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;"
    );
    assert_eq!(ops[8].query_text, ops[1].query_text);
    assert_eq!(ops[9].returned_rows, Some(1));
    assert_eq!(ops[13].command_tag.as_deref(), Some("COMMIT"));
}

/// Replays with the kernel's per-syscall capture limit: each chunk cut to `cap` bytes, the
/// rest reported as lost.
fn replay_capped(chunks: &[Chunk], cap: usize) -> Vec<Event> {
    let mut c = Connection::new();
    let mut out = Vec::new();
    for (d, bytes) in chunks {
        let n = bytes.len().min(cap);
        let lost = (bytes.len() - n) as u64;
        c.feed(*d, &bytes[..n], lost, Seen::default(), &mut out);
    }
    c.close(Seen::default(), &mut out);
    out
}

#[test]
fn capture_limit_cuts_text_but_keeps_every_simple_query() {
    let chunks = load("psycopg2_simple");
    let full = replay(&chunks);
    let full_ops = ops(&full);
    let capped = replay_capped(&chunks, 40);
    let capped_ops = ops(&capped);
    assert_eq!(capped_ops.len(), full_ops.len());
    assert!(capped_ops.iter().any(|o| o.truncated));
    for (c, f) in capped_ops.iter().zip(&full_ops) {
        assert_eq!(c.seq, f.seq);
        // Same statement kind; long texts are cut and say so.
        assert_eq!(c.operation_name, f.operation_name, "{c:?}");
        if c.query_text != f.query_text {
            assert!(c.truncated, "{c:?}");
            let prefix = c.query_text.trim_end_matches('?');
            assert!(
                f.query_text.starts_with(prefix.trim_end()),
                "{} vs {}",
                c.query_text,
                f.query_text
            );
        }
    }
    // A limit above every chunk changes nothing.
    assert_eq!(
        normalized(&replay_capped(&chunks, 1 << 20)),
        normalized(&full)
    );
}

#[test]
fn unsynced_start_at_any_chunk_finds_every_later_query() {
    let chunks = load("psycopg2_simple");
    for k in 1..chunks.len() {
        let mut c = Connection::new_unsynced();
        let mut out = Vec::new();
        for (d, b) in &chunks[k..] {
            c.feed(*d, b, 0, Seen::default(), &mut out);
        }
        c.close(Seen::default(), &mut out);
        let queries = chunks[k..]
            .iter()
            .filter(|(d, b)| *d == Direction::Frontend && b.first() == Some(&b'Q'))
            .count();
        let got = ops(&out);
        assert_eq!(got.len(), queries, "starting at chunk {k}");
        assert!(got.iter().all(|o| !o.truncated), "starting at chunk {k}");
    }
}

proptest::proptest! {
    #[test]
    fn any_capture_limit_never_panics_and_ends_every_operation(cap in 1usize..400) {
        for name in FIXTURES {
            let out = replay_capped(&load(name), cap);
            let started = out.iter().filter(|e| matches!(e, Event::OperationStarted { .. })).count();
            proptest::prop_assert_eq!(started, ops(&out).len());
        }
    }
}
