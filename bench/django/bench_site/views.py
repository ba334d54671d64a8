"""The subscribing lists: a user's own todos (the demo's ``TodosByOwner`` Simple dealer, keyed by
owner) and every todo (the model's Broadcast dealer, ``"Todo"``)."""

from todos.models import Todo
from todos.serializers import TodoSerializer

from snorky_django.rest_framework import ListSubscribeAPIView


class MyTodos(ListSubscribeAPIView):
    serializer_class = TodoSerializer
    dealer = "TodosByOwner"

    def get_dealer_query(self):
        return self.request.user.pk

    def get_queryset(self):
        return Todo.objects.filter(owner=self.request.user).select_related("owner")


class AllTodos(ListSubscribeAPIView):
    serializer_class = TodoSerializer
    broadcast = True

    def get_queryset(self):
        return Todo.objects.select_related("owner")
