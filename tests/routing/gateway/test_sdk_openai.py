"""The official openai SDK, unchanged but for base_url and api_key, against Niyra's /openai/v1
surface: chat, the Responses API, embeddings and voice forwarded as sent, billed exactly from
what the provider (the sandbox) reported. Embeddings and voice are always paid in credits."""

from __future__ import annotations

import io
import json
import wave
from typing import Any

import openai
import pytest

from credits.pricing import Usage
from routing.models import RoutedCall
from sandbox import embedding_for
from sandbox.media import TINY_PNG, audio_seconds, speech_audio
from sandbox.replies import REPLY_TEXT
from sandbox.schema import sample_for
from tests.routing.gateway.conftest import REPLY_WORDS, Niyra, Payer, chat_usage, responses_usage

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "gpt-4.1"
HELLO: Any = [{"role": "user", "content": "Hello there, how are you?"}]  # 5 words
HELLO_WORDS = 5
WEATHER_SCHEMA: Any = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city", "parameters": WEATHER_SCHEMA},
}
WEATHER_QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris today?"}]


def _tool_result_turn(message: Any) -> Any:
    call = message.tool_calls[0]
    return [
        *WEATHER_QUESTION,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny and twenty degrees"},
    ]


def _wav(seconds: float) -> bytes:
    """A silent 16 kHz 16-bit mono WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(b"\x00\x00" * int(16_000 * seconds))
    return buffer.getvalue()


class TestChat:
    def test_plain(self, niyra: Niyra, payer: Payer) -> None:
        completion = niyra.openai(payer.user).chat.completions.create(model=MODEL, messages=HELLO)

        assert completion.choices[0].message.content == REPLY_TEXT
        assert completion.usage is not None
        assert chat_usage(completion.usage) == Usage(HELLO_WORDS, REPLY_WORDS)
        payer.assert_billed(MODEL, MODEL, Usage(HELLO_WORDS, REPLY_WORDS))

    def test_streaming_with_include_usage(self, niyra: Niyra, payer: Payer) -> None:
        chunks = list(
            niyra.openai(payer.user).chat.completions.create(
                model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
            )
        )

        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reported = [c.usage for c in chunks if c.usage is not None]
        assert text == REPLY_TEXT
        assert len(reported) == 1 and chunks[-1].usage is reported[0]
        assert chat_usage(reported[0]) == Usage(HELLO_WORDS, REPLY_WORDS)
        payer.assert_billed(MODEL, MODEL, Usage(HELLO_WORDS, REPLY_WORDS))

    def test_streaming_without_include_usage_shows_no_usage_but_bills_exactly(self, niyra: Niyra, payer: Payer) -> None:
        chunks = list(niyra.openai(payer.user).chat.completions.create(model=MODEL, messages=HELLO, stream=True))

        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY_TEXT
        assert all(c.usage is None for c in chunks)
        assert all(c.choices for c in chunks), "the usage chunk Niyra asked for is not relayed"
        payer.assert_billed(MODEL, MODEL, Usage(HELLO_WORDS, REPLY_WORDS))
        # Niyra asked the provider for usage; nothing else changed in the request.
        (request,) = niyra.provider_requests("/chat/completions")
        assert request["body"] == {
            "model": MODEL,
            "messages": HELLO,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    def test_tools_round_trip(self, niyra: Niyra, payer: Payer) -> None:
        client = niyra.openai(payer.user)

        first = client.chat.completions.create(model=MODEL, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL])
        message = first.choices[0].message
        second = client.chat.completions.create(model=MODEL, messages=_tool_result_turn(message), tools=[WEATHER_TOOL])

        assert first.choices[0].finish_reason == "tool_calls"
        assert message.tool_calls is not None and message.tool_calls[0].type == "function"
        call = message.tool_calls[0].function
        assert (call.name, json.loads(call.arguments)) == ("get_weather", sample_for(WEATHER_SCHEMA))
        assert second.choices[0].message.content == REPLY_TEXT
        assert first.usage is not None and second.usage is not None
        payer.assert_billed(MODEL, MODEL, chat_usage(first.usage), chat_usage(second.usage))

    def test_tools_round_trip_streamed(self, niyra: Niyra, payer: Payer) -> None:
        client = niyra.openai(payer.user)

        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=WEATHER_QUESTION,
                tools=[WEATHER_TOOL],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        pieces = [d.function.arguments for d in deltas if d.function and d.function.arguments]
        call_id = next(d.id for d in deltas if d.id)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        history: Any = [
            *WEATHER_QUESTION,
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "".join(pieces)},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": "Sunny and twenty degrees"},
        ]
        answer = list(
            client.chat.completions.create(
                model=MODEL, messages=history, tools=[WEATHER_TOOL], stream=True, stream_options={"include_usage": True}
            )
        )

        assert finish == ["tool_calls"]
        assert next(d.function.name for d in deltas if d.function and d.function.name) == "get_weather"
        assert len(pieces) > 1, "the arguments arrive in pieces"
        assert json.loads("".join(pieces)) == sample_for(WEATHER_SCHEMA)
        assert "".join(c.choices[0].delta.content or "" for c in answer if c.choices) == REPLY_TEXT
        first_usage, second_usage = chunks[-1].usage, answer[-1].usage
        assert first_usage is not None and second_usage is not None
        payer.assert_billed(MODEL, MODEL, chat_usage(first_usage), chat_usage(second_usage))

    @pytest.mark.parametrize(
        "url", [f"data:image/png;base64,{TINY_PNG}", "https://example.com/cat.png"], ids=["data", "https"]
    )
    def test_image_input(self, niyra: Niyra, payer: Payer, url: str) -> None:
        messages: Any = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
                ],
            }
        ]

        completion = niyra.openai(payer.user).chat.completions.create(model=MODEL, messages=messages)

        assert completion.choices[0].message.content == REPLY_TEXT
        assert completion.usage is not None and completion.usage.prompt_tokens > 5, "the image counts as input"
        payer.assert_billed(MODEL, MODEL, chat_usage(completion.usage))
        assert niyra.provider_requests("/chat/completions")[0]["body"]["messages"] == messages

    def test_json_schema_output(self, niyra: Niyra, payer: Payer) -> None:
        response_format: Any = {
            "type": "json_schema",
            "json_schema": {"name": "weather", "strict": True, "schema": WEATHER_SCHEMA},
        }

        completion = niyra.openai(payer.user).chat.completions.create(
            model=MODEL, messages=WEATHER_QUESTION, response_format=response_format
        )

        content = completion.choices[0].message.content
        assert content is not None and json.loads(content) == sample_for(WEATHER_SCHEMA)
        assert completion.usage is not None
        payer.assert_billed(MODEL, MODEL, chat_usage(completion.usage))
        assert niyra.provider_requests("/chat/completions")[0]["body"]["response_format"] == response_format

    def test_json_object_output(self, niyra: Niyra, payer: Payer) -> None:
        completion = niyra.openai(payer.user).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Answer in JSON please"}],
            response_format={"type": "json_object"},
        )

        content = completion.choices[0].message.content
        assert content is not None and isinstance(json.loads(content), dict)
        assert completion.usage is not None
        payer.assert_billed(MODEL, MODEL, chat_usage(completion.usage))

    def test_n_choices(self, niyra: Niyra, payer: Payer) -> None:
        completion = niyra.openai(payer.user).chat.completions.create(model=MODEL, messages=HELLO, n=2)

        assert [c.index for c in completion.choices] == [0, 1]
        assert all(c.message.content == REPLY_TEXT for c in completion.choices)
        assert completion.usage is not None
        assert chat_usage(completion.usage) == Usage(HELLO_WORDS, 2 * REPLY_WORDS)
        payer.assert_billed(MODEL, MODEL, Usage(HELLO_WORDS, 2 * REPLY_WORDS))


class TestResponses:
    def test_plain(self, niyra: Niyra, payer: Payer) -> None:
        response = niyra.openai(payer.user).responses.create(model=MODEL, input="Hello there, how are you?")

        assert response.output_text == REPLY_TEXT
        assert response.usage is not None
        assert responses_usage(response.usage) == Usage(HELLO_WORDS, REPLY_WORDS)
        payer.assert_billed(MODEL, MODEL, Usage(HELLO_WORDS, REPLY_WORDS))

    def test_streamed(self, niyra: Niyra, payer: Payer) -> None:
        events = list(
            niyra.openai(payer.user).responses.create(model=MODEL, input="Hello there, how are you?", stream=True)
        )

        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        completed = [e for e in events if e.type == "response.completed"]
        assert text == REPLY_TEXT
        assert len(completed) == 1 and completed[0].response.usage is not None
        assert responses_usage(completed[0].response.usage) == Usage(HELLO_WORDS, REPLY_WORDS)
        payer.assert_billed(MODEL, MODEL, Usage(HELLO_WORDS, REPLY_WORDS))
        assert RoutedCall.objects.get(user=payer.user).stream is True

    def test_function_tool(self, niyra: Niyra, payer: Payer) -> None:
        tool: Any = {"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA, "strict": True}

        response = niyra.openai(payer.user).responses.create(
            model=MODEL, input="What is the weather in Paris today?", tools=[tool]
        )

        calls = [item for item in response.output if item.type == "function_call"]
        assert len(calls) == 1 and calls[0].name == "get_weather"
        assert json.loads(calls[0].arguments) == sample_for(WEATHER_SCHEMA)
        assert response.usage is not None
        payer.assert_billed(MODEL, MODEL, responses_usage(response.usage))
        assert niyra.provider_requests("/responses")[0]["body"]["tools"] == [tool]


class TestEmbeddings:
    MODEL = "text-embedding-3-small"

    def test_sdk_defaults_send_base64_and_are_billed_in_credits(self, niyra: Niyra, credits_payer: Payer) -> None:
        result = niyra.openai(credits_payer.user).embeddings.create(model=self.MODEL, input="hello world")

        assert [item.embedding for item in result.data] == [embedding_for("hello world")]
        assert result.usage.prompt_tokens == 2
        credits_payer.assert_billed(self.MODEL, self.MODEL, Usage(input_tokens=2))
        (request,) = niyra.provider_requests("/embeddings")
        assert request["body"]["encoding_format"] == "base64"

    def test_dimensions(self, niyra: Niyra, credits_payer: Payer) -> None:
        result = niyra.openai(credits_payer.user).embeddings.create(
            model=self.MODEL, input=["hello world", "memory search works"], dimensions=4
        )

        assert [item.embedding for item in result.data] == [
            embedding_for("hello world", 4),
            embedding_for("memory search works", 4),
        ]
        credits_payer.assert_billed(self.MODEL, self.MODEL, Usage(input_tokens=5))
        assert niyra.provider_requests("/embeddings")[0]["body"]["dimensions"] == 4


class TestVoice:
    def test_text_to_speech_returns_audio_billed_by_characters(self, niyra: Niyra, credits_payer: Payer) -> None:
        text = "Your table for two is booked for eight tonight."

        speech = niyra.openai(credits_payer.user).audio.speech.create(
            model="gpt-4o-mini-tts", voice="alloy", input=text
        )

        assert speech.content == speech_audio(text, "alloy", "mp3", 1.0)
        assert speech.response.headers["content-type"].startswith("audio/mpeg")
        credits_payer.assert_billed("gpt-4o-mini-tts", "gpt-4o-mini-tts", Usage(characters=len(text)))

    def test_speech_to_text_is_billed_from_the_reported_usage(self, niyra: Niyra, credits_payer: Payer) -> None:
        audio = _wav(2.5)

        transcription = niyra.openai(credits_payer.user).audio.transcriptions.create(
            model="gpt-4o-transcribe", file=("hello.wav", audio, "audio/wav")
        )

        assert transcription.text
        usage = transcription.usage
        assert usage is not None and usage.type == "tokens"
        assert usage.input_token_details is not None
        assert usage.input_token_details.audio_tokens == audio_seconds(len(audio)) * 10
        credits_payer.assert_billed(
            "gpt-4o-transcribe",
            "gpt-4o-transcribe",
            Usage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                audio_input_tokens=usage.input_token_details.audio_tokens or 0,
            ),
        )
        (request,) = niyra.provider_requests("/audio/transcriptions")
        assert request["body"]["file"]["size"] == len(audio)

    def test_whisper_is_billed_by_the_second(self, niyra: Niyra, credits_payer: Payer) -> None:
        audio = _wav(3.2)

        transcription = niyra.openai(credits_payer.user).audio.transcriptions.create(
            model="whisper-1", file=("hello.wav", audio, "audio/wav"), response_format="json"
        )

        assert transcription.text
        seconds = audio_seconds(len(audio))
        credits_payer.assert_billed("whisper-1", "whisper-1", Usage(seconds=seconds))

    @pytest.mark.parametrize("response_format", ["text", "srt", "vtt"])
    def test_answers_that_carry_no_usage_are_refused_by_name(
        self, niyra: Niyra, credits_payer: Payer, response_format: str
    ) -> None:
        """Only json and verbose_json answers report the usage a transcription is billed from."""
        with pytest.raises(openai.BadRequestError) as refused:
            niyra.openai(credits_payer.user).audio.transcriptions.create(
                model="whisper-1", file=("hello.wav", _wav(1.0), "audio/wav"), response_format=response_format
            )

        assert refused.value.body["param"] == "response_format"  # type: ignore[index]
        assert refused.value.body["code"] == "unsupported_parameter"  # type: ignore[index]
        assert niyra.provider_requests("/audio/transcriptions") == []


class TestModels:
    def test_models_list_and_retrieve(self, niyra: Niyra, payer: Payer) -> None:
        client = niyra.openai(payer.user)

        models = {model.id: model for model in client.models.list()}
        gpt = client.models.retrieve(MODEL)

        assert {MODEL, "gpt-5", "text-embedding-3-small", "gpt-4o-mini-tts", "whisper-1"} <= set(models)
        assert not any(model_id.startswith("claude") for model_id in models), "OpenAI models only"
        assert (gpt.id, gpt.owned_by) == (MODEL, "openai")
        chat = (models[MODEL].model_extra or {})["niyra"]
        embeddings = (models["text-embedding-3-small"].model_extra or {})["niyra"]
        assert (chat["available"], chat["key_source"]) == (True, payer.key_source)
        assert (embeddings["available"], embeddings["key_source"]) == (True, "platform")
        payer.assert_nothing_billed()


class TestNothingSilentlyDropped:
    def test_an_unknown_field_and_the_provider_headers_reach_the_provider(self, niyra: Niyra, payer: Payer) -> None:
        niyra.openai(payer.user).chat.completions.create(
            model=MODEL,
            messages=HELLO,
            temperature=0.2,
            seed=7,
            extra_body={"niyra_test_field": {"x": 1}},
            extra_headers={"openai-beta": "assistants=v2", "idempotency-key": "call-0002"},
        )

        (request,) = niyra.provider_requests("/chat/completions")
        assert request["body"] == {
            "model": MODEL,
            "messages": HELLO,
            "temperature": 0.2,
            "seed": 7,
            "niyra_test_field": {"x": 1},
        }
        assert request["headers"]["openai-beta"] == "assistants=v2"
        assert request["headers"]["idempotency-key"] == "call-0002"

    def test_a_dated_id_becomes_the_providers_on_a_stream(self, niyra: Niyra, payer: Payer) -> None:
        stream = niyra.openai(payer.user).chat.completions.create(
            model="openai/gpt-4.1",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"niyra_test_field": None},
        )
        list(stream)

        (request,) = niyra.provider_requests("/chat/completions")
        assert request["body"] == {
            "model": MODEL,
            "messages": HELLO,
            "stream": True,
            "stream_options": {"include_usage": True},
            "niyra_test_field": None,
        }
        payer.assert_billed(MODEL, MODEL, Usage(HELLO_WORDS, REPLY_WORDS))

    def test_the_organisation_headers_go_only_with_the_users_own_key(self, niyra: Niyra, payer: Payer) -> None:
        headers = {"openai-organization": "org-agent", "openai-project": "proj-agent"}

        niyra.openai(payer.user).chat.completions.create(model=MODEL, messages=HELLO, extra_headers=headers)

        (request,) = niyra.provider_requests("/chat/completions")
        sent = {name: request["headers"].get(name) for name in headers}
        assert sent == (headers if payer.path == "byok" else dict.fromkeys(headers))
