"""JSON views whose database and HTTP traffic the end-to-end scenarios assert on.

Each view's docstring lists the statements it sends (as PostgreSQL logs them with psycopg2 and
CONN_MAX_AGE=0: one new connection per request that touches the database), because the
scenarios count them.
"""
import json
import os
import time
import urllib.error
import urllib.request

from django.db import IntegrityError, connection, transaction
from django.http import HttpResponseNotAllowed, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from lab.models import Analysis, Sample, Variant


def health(request):
    """No database access (naming the driver module does not connect)."""
    return JsonResponse({"status": "ok", "driver": connection.Database.__name__})


def samples(request):
    """SELECT COUNT(*) ... FROM "lab_sample";
    SELECT ... FROM "lab_variant" INNER JOIN "lab_sample" ... LIMIT 50 (select_related)."""
    count = Sample.objects.count()
    variants = list(Variant.objects.select_related("sample").order_by("id")[:50])
    return JsonResponse(
        {
            "count": count,
            "variants": [{"key": v.key, "gene": v.gene, "sample": v.sample.name} for v in variants],
        }
    )


def analysis_detail(request, analysis_id):
    """SELECT ... FROM "lab_analysis" WHERE id = N ... LIMIT 1; SELECT ... FROM "lab_sample" ...
    LIMIT 21; SELECT "key" FROM "lab_variant" WHERE sample_id = N (404 after the first if absent)."""
    analysis = Analysis.objects.filter(id=analysis_id).first()
    if analysis is None:
        return JsonResponse({"error": "not found"}, status=404)
    sample = Sample.objects.get(id=analysis.sample_id)
    variants = list(Variant.objects.filter(sample_id=sample.id).values_list("key", flat=True))
    return JsonResponse(
        {
            "id": analysis.id,
            "status": analysis.status,
            "sample": sample.name,
            "variants": variants,
        }
    )


@csrf_exempt
def create_analysis(request):
    """BEGIN; SELECT ... FROM "lab_sample" ... LIMIT 1; INSERT INTO "lab_analysis" ... RETURNING id;
    COMMIT. Answers 201 with {"id", "sample_id"}."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    try:
        payload = json.loads(request.body or b"{}")
    except ValueError:
        return JsonResponse({"error": "invalid json"}, status=400)
    with transaction.atomic():
        sample_id = payload.get("sample_id")
        if sample_id is None:
            sample = Sample.objects.order_by("id").first()
        else:
            sample = Sample.objects.filter(id=sample_id).first()
        if sample is None:
            return JsonResponse({"error": "no such sample"}, status=400)
        analysis = Analysis.objects.create(
            sample=sample, status=payload.get("status", "pending"), score=payload.get("score", 0.0)
        )
    return JsonResponse({"id": analysis.id, "sample_id": sample.id}, status=201)


def fail_db(request):
    """`SELEC 1`: a syntax error (SQLSTATE 42601) the view does not catch, so Django answers 500;
    after the response has been sent (request_finished), Django checks the connection with
    `SELECT 1` before closing it, so that statement belongs to no request."""
    with connection.cursor() as cursor:
        cursor.execute("SELEC 1")
    return JsonResponse({"unreachable": True})


def fail_unique(request):
    """SELECT ... FROM "lab_variant" ... LIMIT 1; BEGIN; INSERT INTO "lab_variant" ... -> 23505
    unique_violation; ROLLBACK. Answers 409."""
    existing = Variant.objects.order_by("id").first()
    if existing is None:
        return JsonResponse({"error": "no variant seeded"}, status=500)
    try:
        with transaction.atomic():
            Variant.objects.create(sample_id=existing.sample_id, key=existing.key, gene="DUP")
    except IntegrityError:
        return JsonResponse({"error": "duplicate variant key", "key": existing.key}, status=409)
    return JsonResponse({"error": "duplicate was accepted"}, status=500)


def call_downstream(request):
    """One outgoing HTTP GET to DOWNSTREAM_URL (plus the request's path suffix ?path=...)."""
    base = os.environ.get("DOWNSTREAM_URL", "")
    if not base:
        return JsonResponse({"error": "DOWNSTREAM_URL is not set"}, status=500)
    url = base + request.GET.get("path", "")
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        body = err.read()
        status = err.code
    except OSError as err:
        return JsonResponse({"error": str(err)}, status=502)
    return JsonResponse({"downstream_status": status, "downstream_bytes": len(body)})


def _ms(request):
    try:
        return max(0, min(int(request.GET.get("ms", "100")), 60_000))
    except ValueError:
        return 100


def sleep(request):
    """Sleeps ms milliseconds in Python, no database access."""
    ms = _ms(request)
    time.sleep(ms / 1000.0)
    return JsonResponse({"slept_ms": ms})


def sql_sleep(request):
    """SELECT pg_sleep(%s): the time is spent in PostgreSQL."""
    ms = _ms(request)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [ms / 1000.0])
    return JsonResponse({"slept_ms": ms})


# Request-id views: every statement carries the request id as a column alias (`AS rid_<N>`),
# which sonde's SQL sanitizer keeps (it drops comments and literals), so a test can match each
# database span to the request that sent it and check its parent.
_RID_QUERIES = (
    'SELECT COUNT(*) AS rid_{rid} FROM "lab_sample"',
    'SELECT "key" AS rid_{rid} FROM "lab_variant" ORDER BY "id" LIMIT 3',
)


def rid_sync(request, rid):
    """Two statements tagged `rid_<rid>`; `?sleep_ms=N` sleeps N ms between them (a long
    request whose first query ends long before its response)."""
    ms = max(0, min(int(request.GET.get("sleep_ms", "0") or 0), 120_000))
    rows = 0
    with connection.cursor() as cursor:
        cursor.execute(_RID_QUERIES[0].format(rid=rid))
        rows += len(cursor.fetchall())
        if ms:
            time.sleep(ms / 1000.0)
        cursor.execute(_RID_QUERIES[1].format(rid=rid))
        rows += len(cursor.fetchall())
    return JsonResponse({"rid": rid, "rows": rows})


def _conninfo():
    from django.conf import settings

    db = settings.DATABASES["default"]
    return (
        f"host={db['HOST']} port={db['PORT']} dbname={db['NAME']} user={db['USER']} "
        f"password={db['PASSWORD']} sslmode={db['OPTIONS'].get('sslmode', 'prefer')}"
    )


async def rid_async(request, rid):
    """The same two statements from an async view with psycopg 3's AsyncConnection (on the
    event loop thread), with `?pause_ms=N` (default 20) awaited between them so concurrent
    requests interleave on the loop."""
    import asyncio

    import psycopg

    ms = max(0, min(int(request.GET.get("pause_ms", "20") or 0), 60_000))
    rows = 0
    async with await psycopg.AsyncConnection.connect(_conninfo()) as aconn:
        async with aconn.cursor() as cur:
            await cur.execute(_RID_QUERIES[0].format(rid=rid))
            rows += len(await cur.fetchall())
            await asyncio.sleep(ms / 1000.0)
            await cur.execute(_RID_QUERIES[1].format(rid=rid))
            rows += len(await cur.fetchall())
    return JsonResponse({"rid": rid, "rows": rows})
