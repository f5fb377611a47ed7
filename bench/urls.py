from django.urls import include, path

urlpatterns = [path("notify/", include("notify.urls"))]
