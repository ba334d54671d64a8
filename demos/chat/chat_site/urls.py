from chat import views
from chat.management.commands.demo_users import DEMO_USERS
from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("", views.index, name="index"),
    path("rooms/<slug:slug>/notes", views.notes, name="notes"),
    path("snorky/", include("snorky_django.urls")),  # fresh connection tokens
    path(
        "login/",
        auth_views.LoginView.as_view(extra_context={"demo_users": DEMO_USERS}, redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
