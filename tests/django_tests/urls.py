from django.urls import include, path
from rest_framework.routers import DefaultRouter

from django_tests.testapp import views

router = DefaultRouter()
router.register("tasks", views.TaskViewSet, basename="task")

urlpatterns = [
    path("api/", include(router.urls)),
    path("api/all-tasks/", views.AllTasksView.as_view()),
    path("api/teams/<int:team>/tasks/", views.TeamTasksView.as_view()),
    path("api/any-task/<int:pk>/", views.AnyTaskView.as_view()),
    path("announce/", views.announce),
    path("failing-create/", views.failing_create),
    path("page/", views.page),
    path("snorky/", include("snorky_django.urls")),
]
