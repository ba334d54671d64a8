from django.apps import AppConfig


class BenchLightConfig(AppConfig):
    name = "benchlight"
    default_auto_field = "django.db.models.BigAutoField"
