"""``path("snorky/", include("snorky_django.urls"))``: the connection token view, named
``snorky:connection-token``."""

from django.urls import path

from snorky_django import views

app_name = "snorky"

urlpatterns = [path("connection-token/", views.connection_token, name="connection-token")]
