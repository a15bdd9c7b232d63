"""PostgreSQL client workloads for sonde's end-to-end tests, with real drivers.

Usage: workload.py DSN SCENARIO

Scenarios print `done` when finished (and `connected` first for `pooled`, which then waits for
a line on stdin before running its queries, so the test can start sonde in between).
"""
import sys

import psycopg
import psycopg2


def psycopg2_simple(dsn):
    """Client-side binding (simple query protocol): 4 SELECTs, 1 syntax error, COPY in and out,
    LISTEN/NOTIFY. autocommit, so no BEGIN/COMMIT."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, name text, price numeric)")
    cur.execute("TRUNCATE items")
    for i in range(3):
        cur.execute("INSERT INTO items VALUES (%s, %s, %s)", (i, f"secret-name-{i}", 9.99 + i))
    cur.execute("SELECT name FROM items WHERE id = %s AND name <> %s", (1, "hidden-literal"))
    cur.fetchall()
    try:
        cur.execute("SELEC broken")
    except psycopg2.Error:
        pass
    try:
        cur.execute("INSERT INTO items VALUES (1, 'dup', 0)")
    except psycopg2.Error:
        pass
    with open("/dev/null", "w") as sink:
        cur.copy_expert("COPY items TO STDOUT", sink)
    import io
    cur.copy_expert("COPY items (id, name, price) FROM STDIN", io.StringIO("10\tcopied\t1.5\n11\tcopied\t2.5\n"))
    cur.execute("LISTEN jobs")
    cur.execute("NOTIFY jobs, 'payload'")
    conn.poll()
    assert conn.notifies, "notification not received"
    cur.execute("SELECT count(*) FROM items")
    assert cur.fetchone()[0] == 5
    conn.close()


def psycopg3_prepared(dsn):
    """Server-side binding: 5 executions of one prepared statement (prepare=True), then a
    pipeline of 4 executes before one sync."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kv (k int PRIMARY KEY, v text)")
        conn.execute("TRUNCATE kv")
        for i in range(5):
            conn.execute("INSERT INTO kv VALUES (%s, %s)", (i, f"value-{i}"), prepare=True)
        with conn.pipeline():
            cur = conn.cursor()
            for i in range(4):
                cur.execute("SELECT v FROM kv WHERE k = %s", (i,))


def pooled(dsn):
    """A connection opened (and a statement prepared) before sonde starts, used after."""
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("CREATE TABLE IF NOT EXISTS pool_t (id int)")
    conn.execute("SELECT 1 FROM pool_t WHERE id = %s", (1,), prepare=True)
    conn.execute("SELECT 1 FROM pool_t WHERE id = %s", (1,), prepare=True)
    print("connected", flush=True)
    sys.stdin.readline()
    for i in range(3):
        conn.execute("SELECT count(*) FROM pool_t WHERE id > %s", (i,))
    conn.execute("SELECT 1 FROM pool_t WHERE id = %s", (2,), prepare=True)
    conn.close()


if __name__ == "__main__":
    dsn, scenario = sys.argv[1], sys.argv[2]
    {"psycopg2_simple": psycopg2_simple, "psycopg3_prepared": psycopg3_prepared, "pooled": pooled}[scenario](dsn)
    print("done", flush=True)
