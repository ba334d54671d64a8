"""A URLconf with subscribing list views that do not say which deltas they hand out, and views that
serialize Task in two ways (the checks tests and the request-time error use it through
ROOT_URLCONF)."""

from django.urls import path
from rest_framework import serializers

from django_tests.testapp.models import Task
from django_tests.testapp.serializers import TaskSerializer
from snorky_django.rest_framework import ListSubscribeAPIView


class MyTasksWithoutDealer(ListSubscribeAPIView):
    """Filters its rows but forgets the dealer: its subscribers would get every task's deltas."""

    serializer_class = TaskSerializer

    def get_queryset(self):
        return Task.objects.filter(owner=self.request.user)


class DealerAndBroadcast(ListSubscribeAPIView):
    queryset = Task.objects.all()
    serializer_class = TaskSerializer
    dealer = "TasksByOwner"
    broadcast = True


class ItemsOverridden(ListSubscribeAPIView):
    """Configured: it builds its own items."""

    serializer_class = TaskSerializer

    def get_queryset(self):
        return Task.objects.filter(owner=self.request.user)

    def get_subscription_items(self):
        return [{"dealer": "TasksByOwner", "query": self.request.user.pk}]


class TaskTitleSerializer(serializers.ModelSerializer):
    class Meta:
        model = Task
        fields = ("id", "title")


class TaskTitles(ListSubscribeAPIView):
    """Configured, but serializes Task otherwise than the others: no view serializer to adopt."""

    queryset = Task.objects.all()
    serializer_class = TaskTitleSerializer
    broadcast = True


urlpatterns = [
    path("mine/", MyTasksWithoutDealer.as_view()),
    path("both/", DealerAndBroadcast.as_view()),
    path("overridden/", ItemsOverridden.as_view()),
    path("titles/", TaskTitles.as_view()),
]
