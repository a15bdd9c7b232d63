"""Settings of the uninstrumented test app; everything that varies comes from the environment."""
import os
import sys

# Django prefers psycopg 3 when it is importable; DB_DRIVER picks the client library explicitly
# (psycopg2 by default: the most deployed one, and the one Psycopg2Instrumentor instruments).
DB_DRIVER = os.environ.get("DB_DRIVER", "psycopg2")
if DB_DRIVER == "psycopg2":
    sys.modules["psycopg"] = None  # makes `import psycopg` fail, so Django falls back to psycopg2
elif DB_DRIVER != "psycopg":
    raise ValueError(f"DB_DRIVER must be psycopg2 or psycopg, not {DB_DRIVER!r}")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "sonde-e2e-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "lab",
]

MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
]

ROOT_URLCONF = "djangoapp.urls"
WSGI_APPLICATION = "djangoapp.wsgi.application"
APPEND_SLASH = False

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("DB_PORT", "5432"),
        "NAME": os.environ.get("DB_NAME", "djangoapp"),
        "USER": os.environ.get("DB_USER", "postgres"),
        "PASSWORD": os.environ.get("DB_PASSWORD", ""),
        "CONN_MAX_AGE": int(os.environ.get("DB_CONN_MAX_AGE", "0")),
        # DB_SSLMODE="" leaves sslmode to libpq's default (prefer), as a user's settings do.
        "OPTIONS": (
            {"sslmode": os.environ.get("DB_SSLMODE", "disable")}
            if os.environ.get("DB_SSLMODE", "disable")
            else {}
        ),
    }
}

USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("DJANGO_LOG_LEVEL", "WARNING")},
}
