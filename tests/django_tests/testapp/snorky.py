"""Dealers of the test app, found by autodiscovery."""

from django_tests.testapp.models import Task
from snorky.dealers import FilterDealer, SimpleDealer


class TasksByOwner(SimpleDealer):
    model = "Task"
    key = "owner"


class TasksByTeam(SimpleDealer):
    model = Task  # a model class works too
    key = "team"


class TasksByTitleWord(SimpleDealer):
    """A key computed in Python: the first word of the title, lowercased."""

    model = "Task"

    def get_key_for_model(self, data):
        return data["title"].split()[0].lower()


class TaskFilter(FilterDealer):
    model = "Task"
