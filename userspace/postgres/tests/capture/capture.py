#!/usr/bin/env python3
"""Capture real PostgreSQL wire traffic for sonde-postgres fixture tests.

Starts a throwaway PostgreSQL 15 (initdb into a temp dir, trust auth, 127.0.0.1 on a free
port), puts an in-process TCP proxy in front of it that records every recv() chunk per
direction, drives it with psycopg2 and psycopg 3, and writes one fixture per scenario to
../fixtures/<name>.txt:

    # comment lines
    F <hex>     bytes the client sent (one recv() on the proxy)
    B <hex>     bytes the server sent

Run: python3 userspace/postgres/tests/capture/capture.py  (needs /usr/lib/postgresql/15/bin)
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psycopg
import psycopg2

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "fixtures")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    """A TCP proxy recording each connection's chunks in order."""

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            chunks = []
            with self.lock:
                self.conns.append(chunks)
            for src, dst, d in ((client, server, "F"), (server, client, "B")):
                threading.Thread(target=self.pump, args=(src, dst, d, chunks), daemon=True).start()

    def pump(self, src, dst, direction, chunks):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            # Record before forwarding so the order across directions is causal.
            with self.lock:
                chunks.append((direction, data))
            dst.sendall(data)

    def take(self):
        """Waits for traffic to settle, returns and forgets the recorded connections."""
        time.sleep(0.3)
        with self.lock:
            conns, self.conns = self.conns, []
        return conns


def write(name, comment, conns, largest=False):
    if largest:
        # e.g. pgbench first opens a connection of its own to check the tables.
        conns = [max(conns, key=len)]
    assert len(conns) == 1, f"{name}: expected one connection, got {len(conns)}"
    path = os.path.join(OUT, f"{name}.txt")
    with open(path, "w") as f:
        for line in comment.strip().splitlines():
            f.write(f"# {line.strip()}\n")
        for direction, data in conns[0]:
            f.write(f"{direction} {data.hex()}\n")
    print(f"wrote {path}: {len(conns[0])} chunks")


def psycopg2_session(port):
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="shop",
                            sslmode="disable", gssencmode="disable", application_name="capture")
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE TABLE orders (id serial PRIMARY KEY, customer text UNIQUE, total numeric)")
    cur.execute("INSERT INTO orders (customer, total) VALUES ('alice', 12.5), ('bob', -3)")
    cur.execute("SELECT id, customer FROM orders WHERE customer IN ('alice', 'bob') ORDER BY id")
    cur.fetchall()
    try:
        cur.execute("INSERT INTO orders (customer, total) VALUES ('alice', 1)")
    except psycopg2.errors.UniqueViolation:
        pass
    cur.execute("BEGIN; UPDATE orders SET total = total + 1 WHERE id = 1; COMMIT")
    cur.copy_expert("COPY orders (customer, total) FROM STDIN", open_rows())
    out = Sink()
    cur.copy_expert("COPY orders TO STDOUT", out)
    cur.execute("LISTEN events")
    cur.execute("NOTIFY events, 'hello'")
    try:
        cur.execute("SELECT 1/0")
    except psycopg2.errors.DivisionByZero:
        pass
    conn.autocommit = False
    cur.execute("SELECT count(*) FROM orders WHERE total > %s", (1,))
    cur.fetchone()
    conn.commit()
    conn.close()


class Sink:
    def write(self, data):
        pass


def open_rows():
    import io
    return io.StringIO("carol\t7\ndave\t8\nerin\t9\n")


def psycopg2_ssl_prefer(port):
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="shop",
                            sslmode="prefer", gssencmode="disable")
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT 42")
    cur.fetchall()
    conn.close()


def enable_ssl(port, data, as_pg):
    """Self-signed certificate, ssl=on via ALTER SYSTEM and a reload."""
    subprocess.run(as_pg + ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            "-subj", "/CN=localhost", "-keyout", os.path.join(data, "server.key"),
                            "-out", os.path.join(data, "server.crt")],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                             sslmode="disable")
    admin.autocommit = True
    cur = admin.cursor()
    cur.execute("ALTER SYSTEM SET ssl = on")
    cur.execute("SELECT pg_reload_conf()")
    admin.close()
    time.sleep(0.5)


def psycopg2_ssl_require(port):
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="shop",
                            sslmode="require", gssencmode="disable")
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT 'secret-in-tls'")
    cur.fetchall()
    conn.close()


def psycopg3_session(port):
    conn = psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="shop",
                           sslmode="disable", gssencmode="disable", autocommit=True)
    # Server-side binding: Parse/Bind/Describe/Execute/Sync with the unnamed statement.
    conn.execute("SELECT customer FROM orders WHERE id = %s", (1,)).fetchall()
    # prepare=True: a named statement (_pg3_0), then executed again by name.
    for i in (1, 2):
        conn.execute("SELECT total FROM orders WHERE customer = %s", (f"c{i}",), prepare=True).fetchall()
    # An error in the extended protocol.
    try:
        conn.execute("SELECT * FROM missing_table WHERE id = %s", (1,))
    except psycopg.errors.UndefinedTable:
        pass
    # Pipeline: several executes before one Sync.
    with conn.pipeline():
        conn.execute("INSERT INTO orders (customer, total) VALUES (%s, %s)", ("frank", 10))
        conn.execute("UPDATE orders SET total = %s WHERE customer = %s", (11, "frank"))
        conn.execute("SELECT id FROM orders WHERE customer = %s", ("frank",))
    # Pipeline with an error in the middle: the last execute is skipped by the server.
    try:
        with conn.pipeline():
            conn.execute("SELECT 1 FROM orders WHERE id = %s", (1,))
            conn.execute("INSERT INTO orders (id, customer) VALUES (%s, %s)", (1, "dup"))
            conn.execute("DELETE FROM orders WHERE id = %s", (2,))
    except psycopg.errors.UniqueViolation:
        pass
    conn.close()


def django_session(port, direct_port, server_side_binding):
    """Django ORM over psycopg 3 (client-side binding by default, or server-side binding)."""
    import django
    from django.conf import settings

    if not settings.configured:
        db = {"ENGINE": "django.db.backends.postgresql", "NAME": "shop", "USER": "postgres",
              "HOST": "127.0.0.1"}
        settings.configure(
            INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
            DATABASES={
                "default": dict(db, PORT=port),
                "bound": dict(db, PORT=port, OPTIONS={"server_side_binding": True}),
                "direct": dict(db, PORT=direct_port),
            },
            USE_TZ=True,
            PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        )
        django.setup()
        from django.core.management import call_command
        call_command("migrate", database="direct", verbosity=0)
    from django.contrib.auth.models import User
    from django.db import connections, transaction

    alias = "bound" if server_side_binding else "default"
    users = User.objects.using(alias)
    name = "sso" if server_side_binding else "admin"
    users.create(username=name, password="x", email="a@example.com")
    users.filter(username=name).first()
    users.get(username=name)
    list(users.filter(id__in=[1, 2, 3]))
    users.count()
    users.filter(username=name).update(email="b@example.com")
    with transaction.atomic(using=alias):
        users.bulk_create([User(username=f"{name}{i}", password="x") for i in range(3)])
    users.filter(username__startswith=name).delete()
    connections[alias].close()


def pgbench(port):
    subprocess.run([f"{PG_BIN}/pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                    "-M", "prepared", "-t", "2", "-c", "1", "-n", "shop"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    os.makedirs(OUT, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="sonde-pg-")
    # PostgreSQL refuses to run as root: use the postgres account then.
    as_pg = []
    if os.geteuid() == 0:
        shutil.chown(tmp, user="postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(tmp, "data")
    port = free_port()
    subprocess.run(as_pg + [f"{PG_BIN}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                    "--locale=C"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(as_pg + [f"{PG_BIN}/pg_ctl", "-D", data, "-w", "-l", os.path.join(tmp, "log"), "-o",
                    f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1", "start"],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        admin = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        admin.autocommit = True
        admin.cursor().execute("CREATE DATABASE shop")
        admin.close()
        rec = Recorder(port)

        psycopg2_session(rec.port)
        write("psycopg2_simple", """
            psycopg2, autocommit: CREATE TABLE; INSERT with literals; SELECT IN-list (2 rows);
            duplicate INSERT (23505); BEGIN; UPDATE; COMMIT in one Q; COPY FROM STDIN (3 rows);
            COPY TO STDOUT (5 rows); LISTEN; NOTIFY (notification to self); SELECT 1/0 (22012);
            then autocommit off: BEGIN, SELECT count(*) with a bound literal, COMMIT.
        """, rec.take())

        psycopg2_ssl_prefer(rec.port)
        write("psycopg2_ssl_prefer", """
            psycopg2 sslmode=prefer against a server with ssl=off: SSLRequest answered 'N',
            then a plaintext startup and SELECT 42.
        """, rec.take())

        psycopg3_session(rec.port)
        write("psycopg3_extended", """
            psycopg 3 server-side binding: unnamed statement SELECT; prepare=True twice (named
            statement _pg3_0: Parse once, then Bind/Execute by name); missing table (42P01);
            pipeline INSERT, UPDATE, SELECT before one Sync; pipeline SELECT, duplicate
            INSERT (23505), DELETE skipped by the server.
        """, rec.take())

        django_session(rec.port, port, server_side_binding=False)
        write("django_psycopg3", """
            Django 5 ORM on psycopg 3 with client-side binding (simple query protocol): create
            user, filter().first(), get(), filter(id__in=[1, 2, 3]), count(), update(),
            atomic() around bulk_create of 3 users, delete() of 4 users.
        """, rec.take())

        django_session(rec.port, port, server_side_binding=True)
        write("django_server_binding", """
            The same Django ORM calls with OPTIONS server_side_binding=True (extended protocol,
            unnamed statements, $n placeholders).
        """, rec.take())

        subprocess.run([f"{PG_BIN}/pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                        "-i", "-s", "1", "-q", "shop"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        pgbench(rec.port)
        write("pgbench_prepared", """
            pgbench -M prepared -t 2 -c 1 -n (libpq, named prepared statements P_0..P_6):
            two TPC-B-like transactions: BEGIN, UPDATE, SELECT, UPDATE, UPDATE, INSERT, END.
        """, rec.take(), largest=True)

        enable_ssl(port, data, as_pg)
        psycopg2_ssl_require(rec.port)
        write("psycopg2_ssl_require", """
            psycopg2 sslmode=require against a server with ssl=on: SSLRequest answered 'S',
            then TLS records (a query runs inside; nothing of it is readable).
        """, rec.take())
    finally:
        subprocess.run(as_pg + [f"{PG_BIN}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
