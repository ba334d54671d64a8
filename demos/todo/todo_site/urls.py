"""URLs of the todo demo: the page, the login pages, the API under /api/, and the connection token
view of snorky_django under /snorky/."""

from django.contrib.auth import views as auth_views
from django.urls import include, path
from rest_framework.routers import DefaultRouter
from todos import views

router = DefaultRouter()
router.register("todos", views.TodoViewSet, basename="todo")

urlpatterns = [
    path("", views.index, name="index"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("snorky/", include("snorky_django.urls")),
    path("api/", include(router.urls)),
]
