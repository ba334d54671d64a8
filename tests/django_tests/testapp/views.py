from django.db import transaction
from django.http import JsonResponse
from django.shortcuts import render
from rest_framework import viewsets

from django_tests.testapp.models import Task
from django_tests.testapp.serializers import TaskSerializer
from snorky_django import publish
from snorky_django.rest_framework import (
    ListSubscribeAPIView,
    ListSubscribeCreateAPIView,
    ListSubscribeModelMixin,
    RetrieveSubscribeAPIView,
    RetrieveSubscribeModelMixin,
)


class TaskViewSet(ListSubscribeModelMixin, RetrieveSubscribeModelMixin, viewsets.ModelViewSet):
    """The user's own tasks, live: dealer TasksByOwner, query = the user's pk; one task through
    the model's primary-key dealer."""

    serializer_class = TaskSerializer
    dealer = "TasksByOwner"

    def get_dealer_query(self):
        return self.request.user.pk

    def get_queryset(self):
        return Task.objects.filter(owner=self.request.user)

    def perform_create(self, serializer):
        serializer.save(owner=self.request.user)


class AllTasksView(ListSubscribeCreateAPIView):
    """Every task, through the model's broadcast dealer ("Task"), chosen explicitly."""

    queryset = Task.objects.all()
    serializer_class = TaskSerializer
    broadcast = True

    def perform_create(self, serializer):
        serializer.save(owner=self.request.user)


class TeamTasksView(ListSubscribeAPIView):
    """A team's open tasks, through a filter dealer."""

    serializer_class = TaskSerializer
    dealer = "TaskFilter"

    def get_dealer_query(self):
        return ["and", ["==", "team", int(self.kwargs["team"])], ["==", "done", False]]

    def get_queryset(self):
        return Task.objects.filter(team=self.kwargs["team"], done=False)


class AnyTaskView(RetrieveSubscribeAPIView):
    """Any task by primary key, through the model's TaskById dealer."""

    queryset = Task.objects.all()
    serializer_class = TaskSerializer


def announce(request):
    publish("news", {"text": request.GET.get("text", "")})
    return JsonResponse({"ok": True})


def failing_create(request):
    """Creates a task, then rolls the transaction back."""
    with transaction.atomic():
        Task.objects.create(title="doomed", owner=request.user)
        transaction.set_rollback(True)
    return JsonResponse({"rolled_back": True}, status=409)


def page(request):
    return render(request, "page.html")
