"""A URLconf with views that fail, to test the 500 handlers."""

from django.http import HttpRequest, HttpResponse
from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class BoomApi(APIView):
    permission_classes = ()

    def get(self, request: Request) -> Response:
        raise RuntimeError("secret-in-exception")


def plain_boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("secret-in-exception")


urlpatterns = [
    path("api/boom", BoomApi.as_view()),
    path("api/plain-boom", plain_boom),
]

handler500 = "core.errors.handler500"
