"""The two lists the clients subscribe through (``X-Snorky: Subscribe``), and the connection token
view of snorky_django."""

from django.urls import include, path

from bench_site import views

urlpatterns = [
    path("api/mine/", views.MyTodos.as_view()),
    path("api/all/", views.AllTodos.as_view()),
    path("snorky/", include("snorky_django.urls")),
]
