"""WSGI entry point; sets up the OpenTelemetry SDK only when SONDE_TEST_OTEL asks for it."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoapp.settings")

OTEL_PROVIDER = None
_protocol = os.environ.get("SONDE_TEST_OTEL", "")
if _protocol:
    from djangoapp import otel

    OTEL_PROVIDER = otel.setup(_protocol)

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
