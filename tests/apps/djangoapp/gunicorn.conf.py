"""gunicorn hooks: flush SDK spans when a worker exits (only matters with SONDE_TEST_OTEL)."""


def worker_exit(server, worker):
    try:
        from djangoapp import wsgi
    except Exception:  # the app failed to import: nothing to flush
        return
    if wsgi.OTEL_PROVIDER is not None:
        wsgi.OTEL_PROVIDER.shutdown()


def post_worker_init(worker):
    # The harness waits for one such line per worker: the app is loaded and requests are served.
    print(f"sonde-e2e: worker ready pid={worker.pid}", flush=True)
