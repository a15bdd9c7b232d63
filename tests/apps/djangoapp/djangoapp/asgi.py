"""ASGI entry point (uvicorn, or gunicorn's uvicorn.workers.UvicornWorker): the same app, its
sync views run on asgiref's executor thread, its async views on the event loop."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoapp.settings")

OTEL_PROVIDER = None
if os.environ.get("SONDE_TEST_OTEL") or os.environ.get("SONDE_TEST_SDK_IN_CODE"):
    from djangoapp import otel

    OTEL_PROVIDER = otel.from_environment()

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
