"""The django-eventstream set-up's one endpoint: ``/todos/events/?list=mine|all``, the library's
SSE view (its channels chosen by ``eventstream_live.TodoChannels``)."""

import django_eventstream
from django.urls import include, path

urlpatterns = [path("todos/events/", include(django_eventstream.urls))]
