"""WSGI entry point; sets up the OpenTelemetry SDK only when the environment asks for it
(SONDE_TEST_OTEL, or SONDE_TEST_SDK_IN_CODE: see djangoapp/otel.py)."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoapp.settings")

OTEL_PROVIDER = None
if os.environ.get("SONDE_TEST_OTEL") or os.environ.get("SONDE_TEST_SDK_IN_CODE"):
    from djangoapp import otel

    OTEL_PROVIDER = otel.from_environment()

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
