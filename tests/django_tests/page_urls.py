"""A URLconf with the page but without snorky_django.urls."""

from django.urls import path

from django_tests.testapp import views

urlpatterns = [path("page/", views.page)]
