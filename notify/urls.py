from django.urls import path

from notify import views

app_name = "notify"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("stream/", views.stream, name="stream"),
    path("publish/", views.publish, name="publish"),
    path("history/", views.history, name="history"),
    path("presence/", views.presence, name="presence"),
    path("health/", views.health, name="health"),
    path("metrics/", views.metrics, name="metrics"),
]
