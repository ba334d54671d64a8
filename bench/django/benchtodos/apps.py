from django.apps import AppConfig


class BenchTodosConfig(AppConfig):
    name = "benchtodos"
    default_auto_field = "django.db.models.BigAutoField"
