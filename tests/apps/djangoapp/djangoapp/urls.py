"""URL routes of the test app (the span names sonde derives depend on these patterns)."""
from django.urls import path

from lab import views

urlpatterns = [
    path("health", views.health),
    path("samples/", views.samples),
    path("analysis/", views.create_analysis),
    path("analysis/<int:analysis_id>", views.analysis_detail),
    path("fail/db", views.fail_db),
    path("fail/unique", views.fail_unique),
    path("call-downstream", views.call_downstream),
    path("sleep", views.sleep),
    path("sql-sleep", views.sql_sleep),
    path("rid/<int:rid>/sync", views.rid_sync),
    path("rid/<int:rid>/async", views.rid_async),
]
