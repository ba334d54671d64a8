"""The demo's ``TodoSerializer`` for ``PlainTodo``: what the Channels set-up sends, so both sides
serialize the same fields the same way."""

from django.contrib.auth import get_user_model
from rest_framework import serializers

from benchtodos.models import PlainTodo


class PlainTodoSerializer(serializers.ModelSerializer):
    owner = serializers.PrimaryKeyRelatedField(queryset=get_user_model().objects.all(), required=False)
    owner_name = serializers.CharField(source="owner.username", read_only=True)

    class Meta:
        model = PlainTodo
        fields = ("id", "title", "done", "shared", "owner", "owner_name", "created")
        read_only_fields = ("created",)
