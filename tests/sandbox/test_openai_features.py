"""The sandbox's OpenAI API beyond plain chat, driven by the official openai SDK: chat tools
(plain and streamed round trips), JSON output, n > 1, image and audio parts, include_usage,
reasoning and cached tokens, the Responses API, embeddings, speech, transcription, models/{id},
and the errors of each (typed SDK exceptions)."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import httpx2
import openai
import pytest
from pydantic import BaseModel

from sandbox import REPLY_TEXT, SandboxServer, embedding_for, openai_key, reply_text
from sandbox.media import AUDIO_INPUT_TOKENS, IMAGE_TOKENS, SPEECH_SAMPLE_RATE, TINY_PNG, audio_seconds
from sandbox.replies import REASONING_TOKENS, TOOL_CALL_TOKENS, tool_tokens

GPT = "gpt-4.1-mini"
PARAMS: Any = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}
WEATHER: Any = {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": PARAMS}}
CLOCK: Any = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
ARGUMENTS = {"city": "sandbox", "days": 1, "unit": "c"}
ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]  # 6 words


def test_a_chat_tool_round_trip(gpt: openai.OpenAI) -> None:
    first = gpt.chat.completions.create(model=GPT, messages=ASK, tools=[WEATHER, CLOCK])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == ARGUMENTS
    tools_in = tool_tokens(WEATHER) + tool_tokens(CLOCK)
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (6 + tools_in, TOOL_CALL_TOKENS)

    history: Any = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny and warm"},
    ]
    second = gpt.chat.completions.create(model=GPT, messages=history, tools=[WEATHER, CLOCK])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == REPLY_TEXT
    assert second.usage is not None and second.usage.prompt_tokens == 6 + TOOL_CALL_TOKENS + 3 + tools_in


def test_a_streamed_chat_tool_call(gpt: openai.OpenAI) -> None:
    chunks = list(gpt.chat.completions.create(model=GPT, messages=ASK, tools=[WEATHER], stream=True))
    first = chunks[0].choices[0].delta
    assert first.role == "assistant"
    [opening] = first.tool_calls or []
    assert (opening.index, opening.type) == (0, "function")
    assert opening.id is not None and opening.function is not None
    assert (opening.function.name, opening.function.arguments) == ("get_weather", "")
    pieces = [c.choices[0].delta.tool_calls[0].function.arguments for c in chunks[1:-1]]  # type: ignore[index,union-attr]
    assert len(pieces) > 1
    assert json.loads("".join(pieces)) == ARGUMENTS  # type: ignore[arg-type]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert all(c.usage is None for c in chunks)

    with gpt.chat.completions.stream(model=GPT, messages=ASK, tools=[WEATHER]) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls or []
    assert call.type == "function" and json.loads(call.function.arguments) == ARGUMENTS

    history: Any = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": opening.id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": opening.id, "content": "ok"},
    ]
    text = "".join(
        c.choices[0].delta.content or ""
        for c in gpt.chat.completions.create(model=GPT, messages=history, tools=[WEATHER], stream=True)
        if c.choices
    )
    assert text == REPLY_TEXT


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "get_weather"),
        ("required", "get_weather"),
        ({"type": "function", "function": {"name": "get_time"}}, "get_time"),
        ("none", None),
    ],
)
def test_chat_tool_choice(gpt: openai.OpenAI, choice: Any, expected: str | None) -> None:
    resp = gpt.chat.completions.create(
        model=GPT, messages=ASK, tools=[WEATHER, CLOCK], tool_choice=choice, parallel_tool_calls=False
    )
    calls = resp.choices[0].message.tool_calls
    if expected is None:
        assert calls is None and resp.choices[0].message.content == REPLY_TEXT
    else:
        assert calls is not None and calls[0].function.name == expected  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "strict": True,
                            "parameters": {"type": "object", "properties": {"a": {"type": "string"}}},
                        },
                    }
                ]
            },
            "tools[0].function.parameters",
        ),
        ({"response_format": {"type": "json_object"}}, "messages"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": PARAMS}}},
            "response_format.json_schema.name",
        ),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"n": 0}, "n"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
    ],
)
def test_chat_errors_name_the_parameter(gpt: openai.OpenAI, extra: Any, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        gpt.chat.completions.create(model=GPT, messages=ASK, **extra)
    assert exc.value.param == param


def test_tool_messages_must_answer_tool_calls(gpt: openai.OpenAI) -> None:
    orphan: Any = [*ASK, {"role": "tool", "tool_call_id": "call_1", "content": "x"}]
    with pytest.raises(openai.BadRequestError, match="preceeding message with 'tool_calls'"):
        gpt.chat.completions.create(model=GPT, messages=orphan)
    call: Any = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    unanswered: Any = [*ASK, {"role": "assistant", "tool_calls": [call]}, {"role": "user", "content": "and?"}]
    with pytest.raises(openai.BadRequestError, match="did not have response messages: call_1"):
        gpt.chat.completions.create(model=GPT, messages=unanswered)


def test_json_object_output(gpt: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Answer in JSON please"}]
    resp = gpt.chat.completions.create(
        model=GPT, messages=messages, response_format={"type": "json_object"}, max_tokens=3
    )
    assert json.loads(resp.choices[0].message.content or "") == {"reply": "Hello from the"}
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 3
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in gpt.chat.completions.create(
            model=GPT, messages=messages, response_format={"type": "json_object"}, stream=True
        )
        if c.choices
    )
    assert json.loads(streamed) == {"reply": REPLY_TEXT}


class Weather(BaseModel):
    city: str
    days: int
    sunny: bool


def test_json_schema_output_and_the_parse_helper(gpt: openai.OpenAI) -> None:
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "weather", "schema": PARAMS, "strict": True}}
    resp = gpt.chat.completions.create(model=GPT, messages=ASK, response_format=fmt)
    assert json.loads(resp.choices[0].message.content or "") == ARGUMENTS
    assert resp.usage is not None and resp.usage.completion_tokens == TOOL_CALL_TOKENS
    parsed = gpt.chat.completions.parse(model=GPT, messages=ASK, response_format=Weather)
    assert parsed.choices[0].message.parsed == Weather(city="sandbox", days=1, sunny=True)


def test_several_choices(gpt: openai.OpenAI) -> None:
    resp = gpt.chat.completions.create(model=GPT, messages=ASK, n=3, max_completion_tokens=4)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert {c.message.content for c in resp.choices} == {reply_text(4)}
    assert resp.usage is not None and resp.usage.completion_tokens == 3 * 4
    chunks = list(
        gpt.chat.completions.create(model=GPT, messages=ASK, n=2, stream=True, stream_options={"include_usage": True})
    )
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: REPLY_TEXT, 1: REPLY_TEXT}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 24


def test_image_and_audio_parts(gpt: openai.OpenAI) -> None:
    content: Any = [
        {"type": "text", "text": "What is in this picture and sound?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{TINY_PNG}", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFF0000WAVE").decode(), "format": "wav"}},
    ]
    resp = gpt.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": content}])
    assert resp.usage is not None and resp.usage.prompt_tokens_details is not None
    assert resp.usage.prompt_tokens == 7 + 2 * IMAGE_TOKENS + AUDIO_INPUT_TOKENS
    assert resp.usage.prompt_tokens_details.audio_tokens == AUDIO_INPUT_TOKENS


@pytest.mark.parametrize(
    ("part", "code"),
    [
        ({"type": "image_url", "image_url": {"url": f"data:image/bmp;base64,{TINY_PNG}"}}, "invalid_image_format"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}, "invalid_image_format"),
        ({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, "invalid_value"),
        ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "ogg"}}, "invalid_value"),
        ({"type": "hologram"}, "invalid_value"),
    ],
)
def test_bad_parts_are_refused(gpt: openai.OpenAI, part: Any, code: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        gpt.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": [part]}])
    assert exc.value.code == code


def test_include_usage_only_when_asked(gpt: openai.OpenAI) -> None:
    without = list(gpt.chat.completions.create(model=GPT, messages=ASK, stream=True))
    assert all(c.usage is None for c in without) and all(c.choices for c in without)
    with_usage = list(
        gpt.chat.completions.create(model=GPT, messages=ASK, stream=True, stream_options={"include_usage": True})
    )
    assert with_usage[-1].choices == [] and with_usage[-1].usage is not None
    assert with_usage[-1].usage.prompt_tokens == 6
    assert all(c.usage is None for c in with_usage[:-1])


def test_reasoning_models_report_reasoning_tokens(gpt: openai.OpenAI) -> None:
    resp = gpt.chat.completions.create(model="gpt-5", messages=ASK)
    usage = resp.usage
    assert usage is not None and usage.completion_tokens_details is not None
    medium = REASONING_TOKENS["medium"]
    assert usage.completion_tokens_details.reasoning_tokens == medium
    assert usage.completion_tokens == medium + 12
    assert resp.choices[0].message.content == REPLY_TEXT
    low = gpt.chat.completions.create(
        model="gpt-5-nano", messages=ASK, reasoning_effort="low", max_completion_tokens=10
    )
    assert low.usage is not None and low.usage.completion_tokens == 10  # 8 reasoning, then 2 words
    assert low.choices[0].message.content == "Hello from" and low.choices[0].finish_reason == "length"
    starved = gpt.chat.completions.create(model="o4-mini", messages=ASK, max_completion_tokens=5)
    assert starved.choices[0].message.content == "" and starved.choices[0].finish_reason == "length"
    chunks = list(
        gpt.chat.completions.create(model="gpt-5.1", messages=ASK, stream=True, stream_options={"include_usage": True})
    )
    final = chunks[-1].usage
    assert final is not None and final.completion_tokens_details is not None
    assert final.completion_tokens_details.reasoning_tokens == medium
    plain = gpt.chat.completions.create(model="gpt-4.1", messages=ASK)
    assert plain.usage is not None and plain.usage.completion_tokens_details is not None
    assert plain.usage.completion_tokens_details.reasoning_tokens == 0


def test_long_prompts_are_cached_automatically(gpt: openai.OpenAI, sandbox: SandboxServer) -> None:
    long_system: Any = {"role": "system", "content": "word " * 1100}
    first = gpt.chat.completions.create(model=GPT, messages=[long_system, *ASK])
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    second = gpt.chat.completions.create(
        model=GPT, messages=[long_system, {"role": "user", "content": "Other question"}]
    )
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens == 1102
    assert second.usage.prompt_tokens_details.cached_tokens == 1024  # 1,100 rounded down to 128s
    short: Any = [{"role": "system", "content": "short"}, *ASK]
    for _ in range(2):
        resp = gpt.chat.completions.create(model=GPT, messages=short)
        assert resp.usage is not None and resp.usage.prompt_tokens_details is not None
        assert resp.usage.prompt_tokens_details.cached_tokens == 0


def test_models_retrieve(gpt: openai.OpenAI) -> None:
    listed = {m.id for m in gpt.models.list()}
    expected = {
        "gpt-5.1",
        "gpt-5.2",
        "gpt-4.1-nano",
        "gpt-5-nano",
        "gpt-4o-mini",
        "tts-1",
        "tts-1-hd",
        "gpt-4o-mini-tts",
    }
    assert expected | {"gpt-4o-transcribe", "gpt-4o-mini-transcribe", "whisper-1"} <= listed
    model = gpt.models.retrieve("gpt-5.1")
    assert (model.id, model.object) == ("gpt-5.1", "model")
    with pytest.raises(openai.NotFoundError) as exc:
        gpt.models.retrieve("gpt-9000")
    assert exc.value.code == "model_not_found"


# --- Responses API ------------------------------------------------------------------------------


def test_responses_plain(gpt: openai.OpenAI) -> None:
    resp = gpt.responses.create(model=GPT, input="Say hello to the sandbox", instructions="Be brief")
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.status == "completed"
    assert resp.output_text == REPLY_TEXT
    assert resp.usage is not None
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (7, 12, 19)
    assert resp.usage.input_tokens_details.cached_tokens == 0
    assert resp.usage.output_tokens_details.reasoning_tokens == 0


def test_responses_reasoning_and_max_output_tokens(gpt: openai.OpenAI) -> None:
    resp = gpt.responses.create(
        model="gpt-5", input=[{"role": "user", "content": "hello"}], reasoning={"effort": "low"}
    )
    assert [item.type for item in resp.output] == ["reasoning", "message"]
    assert resp.usage is not None and resp.usage.output_tokens_details.reasoning_tokens == 8
    assert resp.usage.output_tokens == 8 + 12
    capped = gpt.responses.create(model=GPT, input="hello", max_output_tokens=16)
    assert capped.status == "completed" and capped.output_text == REPLY_TEXT
    capped = gpt.responses.create(model="gpt-5", input="hello", max_output_tokens=20)
    assert capped.status == "incomplete"
    assert capped.incomplete_details is not None and capped.incomplete_details.reason == "max_output_tokens"
    assert capped.output_text == reply_text(4)
    with pytest.raises(openai.BadRequestError) as exc:
        gpt.responses.create(model=GPT, input="hello", max_output_tokens=15)
    assert exc.value.param == "max_output_tokens"


def test_responses_stream_events(gpt: openai.OpenAI) -> None:
    events = list(gpt.responses.create(model=GPT, input="hello", stream=True))
    types = [e.type for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 12,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage is not None and completed.response.usage.output_tokens == 12
    with gpt.responses.stream(model=GPT, input="hello") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == REPLY_TEXT
    assert final.usage is not None and final.usage.input_tokens == 1


def test_responses_function_call_round_trip(gpt: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": PARAMS, "strict": True}]
    first = gpt.responses.create(model=GPT, input=ASK, tools=tools)
    [call] = first.output
    assert call.type == "function_call"
    assert call.name == "get_weather" and json.loads(call.arguments) == ARGUMENTS and call.call_id.startswith("call_")
    assert first.usage is not None and first.usage.output_tokens == TOOL_CALL_TOKENS
    follow_up: Any = [
        *ASK,
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"},
    ]
    second = gpt.responses.create(model=GPT, input=follow_up, tools=tools)
    assert second.output_text == REPLY_TEXT
    assert second.usage is not None and second.usage.input_tokens == 6 + TOOL_CALL_TOKENS + 1 + tool_tokens(tools[0])

    with gpt.responses.stream(model=GPT, input=ASK, tools=tools) as stream:
        pieces = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    assert len(pieces) > 1 and json.loads("".join(pieces)) == ARGUMENTS
    assert final.output[0].type == "function_call" and final.output[0].parsed_arguments == ARGUMENTS
    with pytest.raises(openai.BadRequestError, match="No tool call found"):
        gpt.responses.create(model=GPT, input=[{"type": "function_call_output", "call_id": "call_x", "output": "?"}])


def test_responses_structured_output(gpt: openai.OpenAI) -> None:
    fmt: Any = {"format": {"type": "json_schema", "name": "weather", "schema": PARAMS, "strict": True}}
    resp = gpt.responses.create(model=GPT, input=ASK, text=fmt)
    assert json.loads(resp.output_text) == ARGUMENTS
    parsed = gpt.responses.parse(model=GPT, input=ASK, text_format=Weather)
    assert parsed.output_parsed == Weather(city="sandbox", days=1, sunny=True)
    with gpt.responses.stream(model=GPT, input=ASK, text_format=Weather) as stream:
        assert stream.get_final_response().output_parsed == Weather(city="sandbox", days=1, sunny=True)


def test_responses_images_and_cached_word(sandbox: SandboxServer) -> None:
    content: Any = [
        {"type": "input_text", "text": "what is this"},
        {"type": "input_image", "image_url": f"data:image/png;base64,{TINY_PNG}"},
    ]
    with openai.OpenAI(api_key=openai_key("cached"), base_url=sandbox.openai_base_url, max_retries=0) as client:
        resp = client.responses.create(model=GPT, input=[{"role": "user", "content": content}])
    assert resp.usage is not None
    assert resp.usage.input_tokens == 3 + IMAGE_TOKENS
    assert resp.usage.input_tokens_details.cached_tokens == (3 + IMAGE_TOKENS) // 2


def test_responses_errors_are_typed(sandbox: SandboxServer) -> None:
    with openai.OpenAI(api_key=openai_key("ratelimit"), base_url=sandbox.openai_base_url, max_retries=0) as client:
        with pytest.raises(openai.RateLimitError) as exc:
            client.responses.create(model=GPT, input="hi")
        assert exc.value.response.headers["retry-after"] == "7"
    with (
        openai.OpenAI(api_key=openai_key("cut"), base_url=sandbox.openai_base_url, max_retries=0) as client,
        pytest.raises(openai.APIConnectionError),
        client.responses.stream(model=GPT, input="hi") as stream,
    ):
        stream.get_final_response()


# --- Embeddings ---------------------------------------------------------------------------------


def test_embeddings_with_sdk_defaults_and_dimensions(gpt: openai.OpenAI) -> None:
    result = gpt.embeddings.create(model="text-embedding-3-small", input="hello world")
    assert result.data[0].embedding == embedding_for("hello world")
    wide = gpt.embeddings.create(model="text-embedding-3-large", input=["a", "b c"], dimensions=256)
    assert [len(d.embedding) for d in wide.data] == [256, 256]
    assert wide.data[1].embedding == embedding_for("b c", 256)
    assert wide.usage.prompt_tokens == 3
    tokens = gpt.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3], [4]], encoding_format="float")
    assert tokens.usage.prompt_tokens == 4 and len(tokens.data) == 2
    with pytest.raises(openai.BadRequestError) as exc:
        gpt.embeddings.create(model="text-embedding-ada-002", input="x", dimensions=4)
    assert exc.value.param == "dimensions"


def test_embeddings_base64_on_the_wire(http: httpx2.Client) -> None:
    resp = http.post(
        "/openai/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "hi", "encoding_format": "base64", "dimensions": 12},
        headers={"Authorization": f"Bearer {openai_key()}"},
    )
    raw = base64.b64decode(resp.json()["data"][0]["embedding"])
    assert list(struct.unpack("<12f", raw)) == embedding_for("hi", 12)


# --- Audio --------------------------------------------------------------------------------------


def test_speech_wav_is_a_real_wav(gpt: openai.OpenAI) -> None:
    audio = gpt.audio.speech.create(model="tts-1", input="Hello there, sandbox!", voice="alloy", response_format="wav")
    data = audio.content
    assert audio.response.headers["content-type"] == "audio/wav"
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    channels, rate, _, _, bits = struct.unpack("<HIIHH", data[22:36])
    assert (channels, rate, bits) == (1, SPEECH_SAMPLE_RATE, 16)
    (size,) = struct.unpack("<I", data[40:44])
    assert size == len(data) - 44 == SPEECH_SAMPLE_RATE * 2 * 21 * 20 // 1000  # 21 chars, 20 ms each
    again = gpt.audio.speech.create(model="tts-1", input="Hello there, sandbox!", voice="alloy", response_format="wav")
    assert again.content == data
    other = gpt.audio.speech.create(model="tts-1", input="Something else", voice="alloy", response_format="wav")
    assert other.content != data


@pytest.mark.parametrize(
    ("fmt", "content_type", "magic"),
    [
        ("mp3", "audio/mpeg", b"ID3"),
        ("opus", "audio/opus", b"OggS"),
        ("aac", "audio/aac", b"\xff\xf1"),
        ("flac", "audio/flac", b"fLaC"),
        ("pcm", "audio/pcm", b""),
    ],
)
def test_speech_formats(gpt: openai.OpenAI, fmt: Any, content_type: str, magic: bytes) -> None:
    audio = gpt.audio.speech.create(
        model="gpt-4o-mini-tts", input="Hello", voice="coral", response_format=fmt, speed=1.5
    )
    assert audio.response.headers["content-type"] == content_type
    assert audio.content.startswith(magic) and len(audio.content) > 0


def test_speech_default_is_mp3_and_sse_reports_usage(gpt: openai.OpenAI, http: httpx2.Client) -> None:
    assert gpt.audio.speech.create(model="tts-1-hd", input="Hi", voice="nova").content.startswith(b"ID3")
    resp = http.post(
        "/openai/v1/audio/speech",
        json={"model": "gpt-4o-mini-tts", "input": "one two three", "voice": "alloy", "stream_format": "sse"},
        headers={"Authorization": f"Bearer {openai_key()}"},
    )
    events = [json.loads(f[6:]) for f in resp.text.split("\n\n") if f.startswith("data: ")]
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"}
    assert events[-1]["type"] == "speech.audio.done"
    assert events[-1]["usage"]["input_tokens"] == 3


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "tts-1", "input": "hi"}, 400, "voice"),
        ({"model": "tts-1", "voice": "alloy"}, 400, "input"),
        ({"model": "tts-1", "input": "x" * 4097, "voice": "alloy"}, 400, "input"),
        ({"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "ogg"}, 400, "response_format"),
        ({"model": "tts-1", "input": "hi", "voice": "alloy", "speed": 9}, 400, "speed"),
        ({"model": "gpt-9-tts", "input": "hi", "voice": "alloy"}, 404, None),
    ],
)
def test_speech_errors(http: httpx2.Client, body: Any, status: int, param: str | None) -> None:
    resp = http.post("/openai/v1/audio/speech", json=body, headers={"Authorization": f"Bearer {openai_key()}"})
    assert resp.status_code == status
    assert resp.json()["error"]["param"] == param


def test_speech_missing_voice_raises_the_typed_error(gpt: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        gpt.audio.speech.create(model="tts-1", input="hi", voice=None)  # type: ignore[arg-type]
    assert exc.value.param == "voice"


WAV = b"RIFF" + b"\x00" * 100_000  # 100,000 bytes -> 4 seconds


def test_transcription_with_tokens(gpt: openai.OpenAI) -> None:
    seconds = audio_seconds(len(WAV))
    assert seconds == 4
    result = gpt.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("clip.wav", WAV, "audio/wav"), prompt="names: Niyra"
    )
    assert result.text == REPLY_TEXT
    usage = result.usage
    assert usage is not None and usage.type == "tokens"
    assert usage.input_token_details is not None
    assert (usage.input_token_details.audio_tokens, usage.input_token_details.text_tokens) == (40, 2)
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (42, 12, 54)


def test_transcription_with_whisper(gpt: openai.OpenAI) -> None:
    result = gpt.audio.transcriptions.create(model="whisper-1", file=("clip.wav", WAV))
    assert result.usage is not None and result.usage.type == "duration" and result.usage.seconds == 4
    text = gpt.audio.transcriptions.create(model="whisper-1", file=("clip.wav", WAV), response_format="text")
    assert text.strip() == REPLY_TEXT
    srt = gpt.audio.transcriptions.create(model="whisper-1", file=("clip.wav", WAV), response_format="srt")
    assert "00:00:00,000 --> 00:00:04,000" in srt
    vtt = gpt.audio.transcriptions.create(model="whisper-1", file=("clip.wav", WAV), response_format="vtt")
    assert vtt.startswith("WEBVTT")
    verbose = gpt.audio.transcriptions.create(
        model="whisper-1",
        file=("clip.wav", WAV),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert verbose.duration == 4 and verbose.words is not None and len(verbose.words) == 12


def test_transcription_stream(gpt: openai.OpenAI) -> None:
    events = list(gpt.audio.transcriptions.create(model="gpt-4o-mini-transcribe", file=("clip.wav", WAV), stream=True))
    assert "".join(e.delta for e in events if e.type == "transcript.text.delta") == REPLY_TEXT
    done = events[-1]
    assert done.type == "transcript.text.done" and done.usage is not None and done.usage.output_tokens == 12


def test_transcription_errors(gpt: openai.OpenAI, http: httpx2.Client) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        gpt.audio.transcriptions.create(model="gpt-4o-transcribe", file=("clip.wav", WAV), response_format="srt")
    assert exc.value.param == "response_format"
    with pytest.raises(openai.NotFoundError):
        gpt.audio.transcriptions.create(model="gpt-4.1", file=("clip.wav", WAV))
    auth = {"Authorization": f"Bearer {openai_key()}"}
    missing = http.post(
        "/openai/v1/audio/transcriptions", data={"model": "whisper-1"}, files={"other": ("x", b"x")}, headers=auth
    )
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    not_multipart = http.post("/openai/v1/audio/transcriptions", json={"model": "whisper-1"}, headers=auth)
    assert not_multipart.status_code == 400


# --- The request log ----------------------------------------------------------------------------


def test_the_log_keeps_bodies_and_provider_headers(sandbox: SandboxServer, http: httpx2.Client) -> None:
    key = openai_key()
    body: Any = {
        "model": GPT,
        "messages": ASK,
        "unknown_to_everyone": {"deep": [1, {"x": None}], "f": 0.125},
        "metadata": {"trace": "t-1"},
    }
    headers = {
        "Authorization": f"Bearer {key}",
        "OpenAI-Beta": "assistants=v2",
        "Idempotency-Key": "idem-42",
        "OpenAI-Organization": "org-sandbox",
        "OpenAI-Project": "proj_1",
        "X-Other": "not kept",
    }
    assert http.post("/openai/v1/chat/completions", json=body, headers=headers).status_code == 200
    http.post(
        "/openai/v1/audio/transcriptions",
        data={"model": "whisper-1", "language": "en", "timestamp_granularities[]": ["word", "segment"]},
        files={"file": ("clip.wav", WAV, "audio/wav")},
        headers={"Authorization": f"Bearer {key}"},
    )
    chat, upload = http.get("/_sandbox/log").json()
    assert chat["body"] == body
    assert chat["headers"] == {
        "openai-beta": "assistants=v2",
        "idempotency-key": "idem-42",
        "openai-organization": "org-sandbox",
        "openai-project": "proj_1",
    }
    assert upload["body"] == {
        "model": "whisper-1",
        "language": "en",
        "timestamp_granularities[]": ["word", "segment"],
        "file": {"filename": "clip.wav", "size": len(WAV), "content_type": "audio/wav"},
    }
    assert (upload["model"], upload["status"], upload["headers"]) == ("whisper-1", 200, {})
    assert key not in json.dumps(sandbox.log.records())
    copy = sandbox.log.records()
    copy[0]["body"]["model"] = "changed"
    assert sandbox.log.records()[0]["body"]["model"] == GPT


# --- Behaviour words on every new endpoint ------------------------------------------------------

ENDPOINTS: Any = [
    ("/openai/v1/responses", {"json": {"model": GPT, "input": "hi"}}),
    ("/openai/v1/audio/speech", {"json": {"model": "tts-1", "input": "hi", "voice": "alloy"}}),
    ("/openai/v1/audio/transcriptions", {"data": {"model": "whisper-1"}, "files": {"file": ("a.wav", WAV)}}),
    ("/openai/v1/chat/completions", {"json": {"model": GPT, "messages": ASK, "tools": [WEATHER]}}),
    ("/openai/v1/embeddings", {"json": {"model": "text-embedding-3-small", "input": "hi", "dimensions": 4}}),
]


@pytest.mark.parametrize(("path", "request_args"), ENDPOINTS, ids=[p for p, _ in ENDPOINTS])
@pytest.mark.parametrize(
    ("word", "status", "code"),
    [
        ("invalid", 401, "invalid_api_key"),
        ("ratelimit", 429, "rate_limit_exceeded"),
        ("noquota", 429, "insufficient_quota"),
        ("overloaded", 503, None),
        ("error", 500, None),
    ],
)
def test_error_words_on_every_endpoint(
    http: httpx2.Client, path: str, request_args: Any, word: str, status: int, code: str | None
) -> None:
    resp = http.post(path, headers={"Authorization": f"Bearer {openai_key(word)}"}, **request_args)
    assert resp.status_code == status
    assert resp.json()["error"]["code"] == code


@pytest.mark.parametrize(("path", "request_args"), ENDPOINTS, ids=[p for p, _ in ENDPOINTS])
def test_slow_hang_cut_and_malformed_on_every_endpoint(http: httpx2.Client, path: str, request_args: Any) -> None:
    slow = http.post(path, headers={"Authorization": f"Bearer {openai_key('slow150')}"}, **request_args)
    assert slow.status_code == 200 and slow.elapsed.total_seconds() >= 0.15
    with pytest.raises(httpx2.ReadTimeout):
        http.post(path, headers={"Authorization": f"Bearer {openai_key('hang')}"}, timeout=0.3, **request_args)
    malformed = http.post(path, headers={"Authorization": f"Bearer {openai_key('malformed')}"}, **request_args)
    assert malformed.status_code == 200
    with pytest.raises(ValueError):
        malformed.json()
    with pytest.raises(httpx2.RemoteProtocolError):
        http.post(path, headers={"Authorization": f"Bearer {openai_key('cut')}"}, **request_args)
