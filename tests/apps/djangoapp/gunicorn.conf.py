"""gunicorn hooks: flush SDK spans when a worker exits (only matters when the SDK is on)."""
import sys


def worker_exit(server, worker):
    # Whichever entry point the worker loaded (wsgi, or asgi under UvicornWorker); importing
    # the other one here would set up a second SDK.
    for name in ("djangoapp.wsgi", "djangoapp.asgi"):
        module = sys.modules.get(name)
        provider = getattr(module, "OTEL_PROVIDER", None)
        if provider is not None:
            provider.shutdown()


def post_worker_init(worker):
    # The harness waits for one such line per worker: the app is loaded and requests are served.
    print(f"sonde-e2e: worker ready pid={worker.pid}", flush=True)
