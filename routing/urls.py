"""Routing URLs: native under /api/llm/, OpenAI-compatible under /v1/."""

from django.urls import path

from routing import apis

urlpatterns = [
    path("api/llm/messages", apis.messages_create, name="llm-messages"),
    path("api/llm/models", apis.ModelListApi.as_view(), name="llm-models"),
    path("api/llm/preferences", apis.PreferencesApi.as_view(), name="llm-preferences"),
    path("v1/chat/completions", apis.chat_completions, name="openai-chat-completions"),
    path("v1/embeddings", apis.embeddings_create, name="openai-embeddings"),
    path("v1/models", apis.OpenAIModelListApi.as_view(), name="openai-models"),
]
