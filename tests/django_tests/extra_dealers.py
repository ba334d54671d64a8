"""Dealers the checks tests point SNORKY["DEALERS"] at."""

from snorky.dealers import BroadcastDealer, SimpleDealer


class GhostTasks(BroadcastDealer):
    model = "Ghost"


class TasksByOwner(SimpleDealer):
    """Clashes with the test app's own TasksByOwner."""

    model = "Task"
    key = "owner"
