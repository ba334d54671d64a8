"""The demo's dealers (found by ``snorky_django``'s autodiscovery).

A page subscribes with two items (see ``TodoViewSet.get_subscription_items``): its user's todos
through ``TodosByOwner`` and the team's through ``TodoFilter``. A subscription receives a delta
when any of its items matches the old or the new object, and a todo that stops matching every
item arrives as a ``delete``: that is how an unshared or reassigned todo leaves a page.
"""

from snorky.dealers import FilterDealer, SimpleDealer


class TodosByOwner(SimpleDealer):
    """Query: a user's primary key; receives the todos that user owns."""

    model = "Todo"
    key = "owner"


class TodoFilter(FilterDealer):
    """Query: a filter expression, here ``["==", "shared", true]`` (the team list)."""

    model = "Todo"
