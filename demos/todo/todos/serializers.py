from django.contrib.auth import get_user_model
from rest_framework import serializers

from todos.models import Todo


class TodoSerializer(serializers.ModelSerializer):
    owner = serializers.PrimaryKeyRelatedField(queryset=get_user_model().objects.all(), required=False)
    owner_name = serializers.CharField(source="owner.username", read_only=True)

    class Meta:
        model = Todo
        fields = ("id", "title", "done", "shared", "owner", "owner_name", "created")
        read_only_fields = ("created",)
