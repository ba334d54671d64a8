"""Django REST framework views that hand out DataSync subscriptions (import only with DRF).

A request with the header ``X-Snorky: Subscribe`` gets, besides the usual response, the header
``X-Subscription-Token``: a subscription for what the view returns, which the browser acquires
over WebSocket. The subscription is authorized *before* the data is read, so a change committed
between the two reaches the browser as a delta rather than falling into a gap (so the browser may
receive a delta for a change the response already shows). The subscription belongs to the
requesting user: only connections carrying that user's connection token may acquire it, or resume
it after a reconnection.

Which subscription: ``get_subscription_items()``, by default one item made of ``get_dealer()``
and ``get_dealer_query()``. A list view must say which deltas its subscribers receive; there is no
default, because a view that filters its queryset must filter its deltas the same way:

- ``dealer = "TasksByOwner"`` with ``get_dealer_query()`` (or ``dealer_query``): the deltas that
  dealer routes to the query, typically the rows ``get_queryset()`` returns;
- ``broadcast = True``: every delta of the model to every subscriber (the model's broadcast
  dealer, ``"Task"``; writing ``dealer = "Task"`` is the same choice), for lists everyone sees whole;
- or override ``get_dealer()`` or ``get_subscription_items()``.

A list view with none of these is a configuration error: ``manage.py check`` reports it
(``snorky.E011``) and a subscribing request raises ``ImproperlyConfigured``. As in Snorky 0.1::

    class TaskViewSet(ListSubscribeModelMixin, viewsets.ModelViewSet):
        serializer_class = TaskSerializer
        dealer = "TasksByOwner"

        def get_dealer_query(self):
            return self.request.user.pk

        def get_queryset(self):
            return Task.objects.filter(owner=self.request.user)
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.utils.cache import patch_cache_control, patch_vary_headers
from rest_framework import generics, mixins, status
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.response import Response

from snorky.backend import SnorkyError
from snorky_django import authorize_subscription
from snorky_django.changes import options_for, pk_query

__all__ = [
    "ListSubscribeAPIView",
    "ListSubscribeCreateAPIView",
    "ListSubscribeModelMixin",
    "RetrieveSubscribeAPIView",
    "RetrieveSubscribeModelMixin",
    "SubscribeModelMixin",
    "SubscriptionUnavailable",
    "subscription_problem",
]

logger = logging.getLogger("snorky_django")

TOKEN_HEADER = "X-Subscription-Token"


class SubscriptionUnavailable(APIException):
    """The Snorky server could not authorize the subscription (503: retry later)."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "Live updates are unavailable right now."
    default_code = "subscription_unavailable"


class SubscribeModelMixin:
    """What the subscribing views share: the hooks deciding the subscription, and the headers.

    - ``dealer`` / :meth:`get_dealer`: the dealer name; or ``broadcast = True`` for the model's
      broadcast dealer. One of them is required (see the module docs).
    - ``dealer_query`` / :meth:`get_dealer_query`: the item's query.
    - :meth:`get_subscription_items`: the whole list of ``{"dealer", "query"}`` items.
    - :meth:`get_subscription_user`: whose connections may acquire it (``request.user``).
    """

    dealer: str | None = None
    dealer_query: Any = None
    broadcast: bool = False
    """Subscribers receive every delta of the model (its broadcast dealer): an explicit choice."""
    request: Any

    def get_subscription_model(self) -> type[models.Model]:
        """The model this view serves (from ``queryset`` or ``get_queryset()``)."""
        queryset = getattr(self, "queryset", None)
        if queryset is None:
            queryset = self.get_queryset()  # type: ignore[attr-defined]
        return queryset.model  # type: ignore[no-any-return]

    def get_dealer(self) -> str:
        """The dealer of the subscription item: ``dealer``, or with ``broadcast = True`` the
        model's broadcast dealer; raises ``ImproperlyConfigured`` when the view sets neither."""
        if self.dealer and self.broadcast is True:
            raise ImproperlyConfigured(_both_message(type(self)))
        if self.dealer:
            return self.dealer
        if self.broadcast is not True:
            raise ImproperlyConfigured(_missing_message(type(self)))
        model = self.get_subscription_model()
        options = options_for(model)
        if options is None or not options.dealers:
            raise ImproperlyConfigured(
                f"{type(self).__name__}.broadcast = True needs the broadcast dealer of {model.__name__}: "
                f"make it @subscribable (with its default dealers), or set dealer = ..."
            )
        return options.name

    def get_dealer_query(self) -> Any:
        """The query of the subscription item: ``dealer_query`` by default."""
        return self.dealer_query

    def get_subscription_items(self) -> list[dict[str, Any]]:
        """The items to authorize: ``[{"dealer": get_dealer(), "query": get_dealer_query()}]``."""
        return [{"dealer": self.get_dealer(), "query": self.get_dealer_query()}]

    def subscription_requested(self) -> bool:
        """Whether the request asks for a subscription (``X-Snorky: Subscribe``)."""
        header: str = self.request.headers.get("X-Snorky", "")
        return header.strip().lower() == "subscribe"

    def get_subscription_user(self) -> Any:
        """The user the subscription belongs to: ``request.user``. Only connections of a logged-in
        user may acquire (or resume) their subscription; an anonymous request's may be acquired by
        any connection."""
        return getattr(self.request, "user", None)

    def authorize_subscription(self, items: list[dict[str, Any]] | None = None) -> str:
        """Asks the server for a token for ``items`` (default :meth:`get_subscription_items`),
        bound to :meth:`get_subscription_user`; raises :class:`SubscriptionUnavailable` (503) when
        the server cannot answer."""
        if items is None:
            items = self.get_subscription_items()
        try:
            return authorize_subscription(items, user=self.get_subscription_user())
        except SnorkyError as err:
            logger.error("Snorky: could not authorize a subscription for %r: %s", items, err)
            raise SubscriptionUnavailable() from err

    def add_subscription_headers(self, response: Response, token: str) -> Response:
        """Puts the token in the response, readable by cross-origin scripts, never cached."""
        response[TOKEN_HEADER] = token
        exposed = [h.strip() for h in response.get("Access-Control-Expose-Headers", "").split(",") if h.strip()]
        if TOKEN_HEADER.lower() not in (h.lower() for h in exposed):
            exposed.append(TOKEN_HEADER)
        response["Access-Control-Expose-Headers"] = ", ".join(exposed)
        patch_cache_control(response, private=True, no_store=True)
        patch_vary_headers(response, ["X-Snorky"])
        return response


def subscription_problem(view: type[Any]) -> str | None:
    """Why ``view`` (a subscribing view class) cannot say which deltas its list subscribers get,
    or ``None`` when it can: it sets ``dealer`` or ``broadcast = True`` (not both), or overrides
    ``get_dealer()`` or ``get_subscription_items()``."""
    overrides = any(
        getattr(view, method) is not getattr(SubscribeModelMixin, method)
        for method in ("get_dealer", "get_subscription_items")
    )
    dealer = getattr(view, "dealer", None)
    broadcast = getattr(view, "broadcast", False)
    if dealer and broadcast is True:
        return _both_message(view)
    if dealer or broadcast is True or overrides:
        return None
    return _missing_message(view)


def _both_message(view: type[Any]) -> str:
    return (
        f"{view.__module__}.{view.__qualname__} sets both dealer = {view.dealer!r} and broadcast = True: "
        "keep the one that says which deltas its subscribers receive."
    )


def _missing_message(view: type[Any]) -> str:
    return (
        f"{view.__module__}.{view.__qualname__} hands out subscriptions without saying which deltas they "
        'receive: set dealer = "..." (a dealer routing the rows get_queryset() returns, with '
        "get_dealer_query()), or broadcast = True to send every delta of the model to every subscriber."
    )


class ListSubscribeModelMixin(SubscribeModelMixin, mixins.ListModelMixin):
    """``list()`` that understands ``X-Snorky: Subscribe``."""

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if not self.subscription_requested():
            return super().list(request, *args, **kwargs)
        token = self.authorize_subscription()
        response = super().list(request, *args, **kwargs)
        return self.add_subscription_headers(response, token)


class RetrieveSubscribeModelMixin(SubscribeModelMixin, mixins.RetrieveModelMixin):
    """``retrieve()`` that understands ``X-Snorky: Subscribe``: a subscription to one object.

    Its hooks are separate from the list's, so one viewset can serve both: ``object_dealer``
    (default: the model's dealer keyed by primary key, ``"TaskById"``) and
    :meth:`get_object_subscription_items`.
    """

    object_dealer: str | None = None

    def get_object_dealer(self) -> str:
        """The dealer for one object: ``object_dealer``, else the model's primary-key dealer."""
        if self.object_dealer:
            return self.object_dealer
        model = self.get_subscription_model()
        options = options_for(model)
        if options is None:
            raise TypeError(f"{type(self).__name__}: set object_dealer, or make {model.__name__} @subscribable")
        return options.pk_dealer

    def get_object_subscription_items(self, obj: models.Model) -> list[dict[str, Any]]:
        """The items to authorize for ``obj``: its primary key, as its deltas carry it."""
        return [{"dealer": self.get_object_dealer(), "query": pk_query(obj)}]

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if not self.subscription_requested():
            return super().retrieve(request, *args, **kwargs)
        # Finding the object first runs the 404 and object-permission checks before anything is
        # authorized; it is read again once the token exists, so no change falls in between.
        obj = self.get_object()  # type: ignore[attr-defined]
        token = self.authorize_subscription(self.get_object_subscription_items(obj))
        response = super().retrieve(request, *args, **kwargs)
        return self.add_subscription_headers(response, token)


class ListSubscribeAPIView(ListSubscribeModelMixin, generics.GenericAPIView):  # type: ignore[type-arg]
    """``GET``: the list, with a subscription on request."""

    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.list(request, *args, **kwargs)


class ListSubscribeCreateAPIView(ListSubscribeModelMixin, mixins.CreateModelMixin, generics.GenericAPIView):  # type: ignore[type-arg]
    """``GET``: the list, with a subscription on request; ``POST``: create."""

    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.list(request, *args, **kwargs)

    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.create(request, *args, **kwargs)


class RetrieveSubscribeAPIView(RetrieveSubscribeModelMixin, generics.GenericAPIView):  # type: ignore[type-arg]
    """``GET``: one object, with a subscription to it on request."""

    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.retrieve(request, *args, **kwargs)
