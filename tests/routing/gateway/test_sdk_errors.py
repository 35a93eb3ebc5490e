"""Every refusal and provider error raises the SDK's typed exception: the provider's status and
error shape kept (with `retry-after`), Niyra's own refusals in the same shape with the product
page's words and a Niyra `code`. A failed call costs nothing and leaves no hold open."""

from __future__ import annotations

import time
from typing import Any

import anthropic
import openai
import pytest

from accounts.models import ApiToken
from accounts.services import api_token_revoke
from byok.models import KeyStatus
from core import errors
from credits.pricing import Usage, price_usage
from routing.models import RoutedCall
from routing.services import routing_preference_set
from sandbox import RETRY_AFTER_SECONDS, anthropic_key, openai_key
from sandbox.replies import REPLY_TEXT
from tests.routing.gateway.conftest import REPLY_WORDS, Niyra, Path, Payer, available, key_recorded

pytestmark = pytest.mark.django_db(transaction=True)

CLAUDE = "claude-sonnet-4-6"
GPT = "gpt-4.1"
HELLO: Any = [{"role": "user", "content": "Hello there, how are you?"}]  # 5 words
HELLO_WORDS = 5


def _anthropic_error(exc: anthropic.APIStatusError) -> dict[str, Any]:
    """The `error` object of an Anthropic-shaped error body."""
    assert isinstance(exc.body, dict)
    error = exc.body["error"]
    assert isinstance(error, dict)
    return error


def _said(exc: openai.APIStatusError) -> str:
    """The message of an OpenAI-shaped error body (the SDK's `.message` adds the status)."""
    assert isinstance(exc.body, dict)
    message = exc.body["message"]
    assert isinstance(message, str)
    return message


def _claude(niyra: Niyra, user: Any, **params: Any) -> Any:
    return niyra.anthropic(user).messages.create(model=CLAUDE, max_tokens=100, messages=HELLO, **params)


def _gpt(niyra: Niyra, user: Any, **params: Any) -> Any:
    return niyra.openai(user).chat.completions.create(model=GPT, messages=HELLO, **params)


def _byok_user(make_account: Any, store_key: Any, provider: str, *words: str) -> Payer:
    user = make_account(plan="pro")
    store_key(user, provider, anthropic_key(*words) if provider == "anthropic" else openai_key(*words))
    return Payer("byok", user)


def _user_on(path: Path, provider: str, word: str, make_account: Any, store_key: Any, settings: Any) -> Payer:
    """A user whose calls to `provider` meet the sandbox's `word`: on the platform key
    (credits) or on the user's own key (BYOK)."""
    if path == "byok":
        return _byok_user(make_account, store_key, provider, word)
    if provider == "anthropic":
        settings.ANTHROPIC_API_KEY = anthropic_key("sandbox", "platform", word)
    else:
        settings.OPENAI_API_KEY = openai_key("sandbox", "platform", word)
    return Payer("credits", make_account(plan="free"))


class TestAuthentication:
    def test_a_bad_token_is_an_authentication_error_in_both_sdks(self, niyra: Niyra) -> None:
        with pytest.raises(anthropic.AuthenticationError) as claude:
            niyra.anthropic(token="niyra-not-a-token").messages.create(model=CLAUDE, max_tokens=10, messages=HELLO)
        with pytest.raises(openai.AuthenticationError) as gpt:
            niyra.openai(token="niyra-not-a-token").chat.completions.create(model=GPT, messages=HELLO)
        with pytest.raises(openai.AuthenticationError):
            niyra.universal(token="niyra-not-a-token").models.list()

        assert _anthropic_error(claude.value)["type"] == "authentication_error"
        assert gpt.value.code == errors.AUTHENTICATION_FAILED.code
        assert niyra.log() == [], "nothing reached a provider"

    def test_a_revoked_token_is_refused_on_the_next_call(self, niyra: Niyra, make_account: Any) -> None:
        user = make_account(plan="free")
        token = niyra.token(user)
        client = niyra.openai(token=token)
        client.chat.completions.create(model=GPT, messages=HELLO)

        api_token_revoke(user=user, token_id=ApiToken.objects.get(user=user).pk)
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model=GPT, messages=HELLO)


class TestTheUsersKey:
    def test_a_rejected_key_is_an_authentication_error_in_the_product_pages_words(
        self, niyra: Niyra, make_account: Any, store_key: Any
    ) -> None:
        claude_payer = _byok_user(make_account, store_key, "anthropic", "invalid")
        store_key(claude_payer.user, "openai", openai_key("invalid"))

        with pytest.raises(anthropic.AuthenticationError) as claude:
            _claude(niyra, claude_payer.user)
        with pytest.raises(openai.AuthenticationError) as gpt:
            _gpt(niyra, claude_payer.user)

        error = _anthropic_error(claude.value)
        assert (error["type"], error["code"], error["message"]) == (
            "authentication_error",
            errors.KEY_REJECTED.code,
            errors.KEY_REJECTED.message,
        )
        assert (gpt.value.code, _said(gpt.value)) == (errors.KEY_REJECTED.code, errors.KEY_REJECTED.message)
        # Recorded once the client had its answer: the next call is refused by Niyra without
        # asking the provider again.
        statuses = [key_recorded(claude_payer.user, p, KeyStatus.INVALID).status for p in ("anthropic", "openai")]
        assert statuses == [KeyStatus.INVALID, KeyStatus.INVALID]
        claude_payer.assert_nothing_billed()
        time.sleep(0.05)  # the cache's invalidation, a few ms after the change commits, has arrived
        calls_before = len(niyra.log())
        with pytest.raises(anthropic.APIStatusError) as again:
            _claude(niyra, claude_payer.user)
        assert _anthropic_error(again.value)["code"] == errors.KEY_REJECTED.code
        assert len(niyra.log()) == calls_before

    @pytest.mark.parametrize("provider", ["anthropic", "openai"])
    def test_a_rate_limited_key_is_a_rate_limit_error_with_retry_after(
        self, niyra: Niyra, make_account: Any, store_key: Any, provider: str
    ) -> None:
        payer = _byok_user(make_account, store_key, provider, "ratelimit")
        call = _claude if provider == "anthropic" else _gpt
        error_type: Any = anthropic.RateLimitError if provider == "anthropic" else openai.RateLimitError

        with pytest.raises(error_type) as refused:
            call(niyra, payer.user)

        assert refused.value.status_code == 429
        assert refused.value.response.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
        body = refused.value.body
        error = body["error"] if provider == "anthropic" else body
        assert isinstance(error, dict)
        assert (error["code"], error["message"]) == (errors.KEY_RATE_LIMITED.code, errors.KEY_RATE_LIMITED.message)
        payer.assert_nothing_billed()
        assert RoutedCall.objects.get(user=payer.user).outcome != "ok"

    def test_a_key_out_of_quota_keeps_the_providers_status_with_niyras_words(
        self, niyra: Niyra, make_account: Any, store_key: Any
    ) -> None:
        payer = _byok_user(make_account, store_key, "anthropic", "noquota")
        store_key(payer.user, "openai", openai_key("noquota"))

        with pytest.raises(anthropic.BadRequestError) as claude:  # Anthropic says 400 "credit balance too low"
            _claude(niyra, payer.user)
        with pytest.raises(openai.RateLimitError) as gpt:  # OpenAI says 429 insufficient_quota
            _gpt(niyra, payer.user)

        error = _anthropic_error(claude.value)
        assert (error["code"], error["message"]) == (
            errors.KEY_QUOTA_EXHAUSTED.code,
            errors.KEY_QUOTA_EXHAUSTED.message,
        )
        assert (gpt.value.code, _said(gpt.value)) == (
            errors.KEY_QUOTA_EXHAUSTED.code,
            errors.KEY_QUOTA_EXHAUSTED.message,
        )
        payer.assert_nothing_billed()


class TestProviderFailures:
    @pytest.mark.parametrize("path", ["credits", "byok"])
    @pytest.mark.parametrize(("word", "claude_status", "gpt_status"), [("overloaded", 529, 503), ("error", 500, 500)])
    def test_an_outage_is_an_internal_server_error_of_the_providers_status(
        self,
        niyra: Niyra,
        make_account: Any,
        store_key: Any,
        settings: Any,
        path: Path,
        word: str,
        claude_status: int,
        gpt_status: int,
    ) -> None:
        claude_payer = _user_on(path, "anthropic", word, make_account, store_key, settings)
        gpt_payer = _user_on(path, "openai", word, make_account, store_key, settings)

        with pytest.raises(anthropic.InternalServerError) as claude:
            _claude(niyra, claude_payer.user)
        with pytest.raises(openai.InternalServerError) as gpt:
            _gpt(niyra, gpt_payer.user)
        with pytest.raises(openai.InternalServerError) as universal:
            niyra.universal(claude_payer.user).chat.completions.create(model=CLAUDE, messages=HELLO, max_tokens=10)

        assert (claude.value.status_code, gpt.value.status_code) == (claude_status, gpt_status)
        if word == "overloaded":
            assert isinstance(claude.value, anthropic.OverloadedError)
        assert universal.value.status_code == claude_status
        claude_payer.assert_nothing_billed()
        gpt_payer.assert_nothing_billed()

    @pytest.mark.parametrize(
        ("provider", "word"),
        [("anthropic", "invalid"), ("openai", "invalid"), ("anthropic", "noquota"), ("openai", "noquota")],
    )
    def test_a_refused_platform_key_is_provider_unavailable_never_key_invalid(
        self, niyra: Niyra, make_account: Any, store_key: Any, settings: Any, provider: str, word: str
    ) -> None:
        payer = _user_on("credits", provider, word, make_account, store_key, settings)

        if provider == "anthropic":
            with pytest.raises(anthropic.InternalServerError) as claude:
                _claude(niyra, payer.user)
            status, error = claude.value.status_code, _anthropic_error(claude.value)
            code, message = error["code"], error["message"]
        else:
            with pytest.raises(openai.InternalServerError) as gpt:
                _gpt(niyra, payer.user)
            status, code, message = gpt.value.status_code, gpt.value.code, _said(gpt.value)

        assert (status, code) == (503, errors.PROVIDER_UNAVAILABLE.code)
        assert message == errors.PROVIDER_UNAVAILABLE.message
        assert "Key invalid" not in message and "quota" not in message.lower()
        payer.assert_nothing_billed()

    @pytest.mark.parametrize("path", ["credits", "byok"])
    def test_a_stream_that_fails_before_its_first_byte_is_an_http_error(
        self, niyra: Niyra, make_account: Any, store_key: Any, settings: Any, path: Path
    ) -> None:
        claude_payer = _user_on(path, "anthropic", "overloaded", make_account, store_key, settings)
        gpt_payer = _user_on(path, "openai", "overloaded", make_account, store_key, settings)

        with pytest.raises(anthropic.InternalServerError) as created:
            _claude(niyra, claude_payer.user, stream=True)
        with (
            pytest.raises(anthropic.InternalServerError),
            niyra.anthropic(claude_payer.user).messages.stream(model=CLAUDE, max_tokens=10, messages=HELLO) as stream,
        ):
            list(stream)  # pragma: no cover - the context manager raises first
        with pytest.raises(openai.InternalServerError) as gpt:
            _gpt(niyra, gpt_payer.user, stream=True)
        with pytest.raises(openai.InternalServerError) as universal:
            niyra.universal(claude_payer.user).chat.completions.create(
                model=CLAUDE, messages=HELLO, max_tokens=10, stream=True
            )

        assert (created.value.status_code, gpt.value.status_code, universal.value.status_code) == (529, 503, 529)
        claude_payer.assert_nothing_billed()
        gpt_payer.assert_nothing_billed()

    def test_a_stream_whose_first_event_is_garbage_is_an_http_error(
        self, niyra: Niyra, make_account: Any, settings: Any
    ) -> None:
        settings.ANTHROPIC_API_KEY = anthropic_key("sandbox", "platform", "malformed")
        payer = Payer("credits", make_account(plan="free"))

        with pytest.raises(anthropic.InternalServerError) as refused:
            _claude(niyra, payer.user, stream=True)

        assert refused.value.status_code == 503
        assert _anthropic_error(refused.value)["code"] == errors.PROVIDER_UNAVAILABLE.code
        payer.assert_nothing_billed()


class TestNiyrasRefusals:
    def test_not_enough_credits_is_a_402_insufficient_credits(self, niyra: Niyra, make_account: Any) -> None:
        user = make_account(plan="free", credits_mc=1)

        with pytest.raises(anthropic.APIStatusError) as claude:
            _claude(niyra, user)
        with pytest.raises(openai.APIStatusError) as gpt:
            _gpt(niyra, user)
        with pytest.raises(openai.APIStatusError) as embeddings:
            niyra.openai(user).embeddings.create(model="text-embedding-3-small", input="hello " * 2000)

        assert claude.value.status_code == gpt.value.status_code == embeddings.value.status_code == 402
        assert _anthropic_error(claude.value)["code"] == errors.INSUFFICIENT_CREDITS.code
        assert gpt.value.code == embeddings.value.code == errors.INSUFFICIENT_CREDITS.code
        assert _said(gpt.value) == errors.INSUFFICIENT_CREDITS.message
        assert niyra.log() == [], "nothing reached a provider"
        assert available(user) == 1

    def test_apex_on_the_free_plan_is_permission_denied(self, niyra: Niyra, make_account: Any) -> None:
        user = make_account(plan="free")

        with pytest.raises(anthropic.PermissionDeniedError) as claude:
            niyra.anthropic(user).messages.create(model="apex", max_tokens=10, messages=HELLO)
        with pytest.raises(openai.PermissionDeniedError) as universal:
            niyra.universal(user).chat.completions.create(model="apex", messages=HELLO)

        assert _anthropic_error(claude.value)["code"] == errors.APEX_NOT_ENABLED.code
        assert universal.value.code == errors.APEX_NOT_ENABLED.code
        assert niyra.log() == []

    @pytest.mark.parametrize(
        ("model", "code", "words"),
        [
            ("claude-nonexistent-9", errors.MODEL_NOT_SUPPORTED.code, None),
            ("claude-3-5-sonnet-20241022", "model_retired", "claude-sonnet-4-6"),
            ("gpt-3.5-turbo", "model_retired", "gpt-4.1-mini"),
            ("llama-3-70b", errors.THIRD_PARTY_PROVIDER.code, None),
            ("together/llama-3-70b", errors.THIRD_PARTY_PROVIDER.code, None),
        ],
    )
    def test_unknown_retired_and_third_party_models_are_bad_requests(
        self, niyra: Niyra, make_account: Any, model: str, code: str, words: str | None
    ) -> None:
        user = make_account(plan="free")

        with pytest.raises(openai.BadRequestError) as universal:
            niyra.universal(user).chat.completions.create(model=model, messages=HELLO)
        if model.startswith("claude"):
            with pytest.raises(anthropic.BadRequestError) as claude:
                niyra.anthropic(user).messages.create(model=model, max_tokens=10, messages=HELLO)
            assert _anthropic_error(claude.value)["code"] == code

        assert universal.value.code == code
        if words:
            assert f"{model} was retired" in _said(universal.value)
            assert words in _said(universal.value)
        assert niyra.log() == []

    def test_a_model_of_the_other_provider_on_a_native_surface_is_refused(
        self, niyra: Niyra, make_account: Any
    ) -> None:
        user = make_account(plan="free")

        with pytest.raises(anthropic.BadRequestError) as claude:
            niyra.anthropic(user).messages.create(model=GPT, max_tokens=10, messages=HELLO)
        with pytest.raises(openai.BadRequestError) as gpt:
            niyra.openai(user).chat.completions.create(model=CLAUDE, messages=HELLO)

        assert _anthropic_error(claude.value)["code"] == errors.MODEL_NOT_SUPPORTED.code
        assert (gpt.value.code, gpt.value.param) == (errors.MODEL_NOT_SUPPORTED.code, "model")
        assert niyra.log() == []

    def test_a_wrong_method_is_a_405_with_allow(self, niyra: Niyra, make_account: Any) -> None:
        user = make_account(plan="free")

        with pytest.raises(openai.APIStatusError) as gpt:
            niyra.openai(user).get("/chat/completions", cast_to=object)
        with pytest.raises(anthropic.APIStatusError) as claude:
            niyra.anthropic(user).post("/v1/models", cast_to=object, body={})

        assert (gpt.value.status_code, gpt.value.response.headers["allow"]) == (405, "POST")
        assert (claude.value.status_code, claude.value.response.headers["allow"]) == (405, "GET")


class TestFallbackToCredits:
    @pytest.mark.parametrize(("provider", "word"), [("anthropic", "ratelimit"), ("openai", "noquota")])
    def test_streams_fall_back_to_credits_when_the_user_opted_in(
        self, niyra: Niyra, make_account: Any, store_key: Any, provider: str, word: str
    ) -> None:
        payer = _byok_user(make_account, store_key, provider, word)
        routing_preference_set(user=payer.user, fallback_to_credits=True)

        if provider == "anthropic":
            with niyra.anthropic(payer.user).messages.stream(model=CLAUDE, max_tokens=100, messages=HELLO) as stream:
                text = "".join(stream.text_stream)
            model, price_key = CLAUDE, "claude-sonnet-4"
            provider_path = "/anthropic/v1/messages"
        else:
            chunks = list(_gpt(niyra, payer.user, stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert all(c.usage is None for c in chunks)
            model, price_key = GPT, GPT
            provider_path = "/openai/v1/chat/completions"

        assert text == REPLY_TEXT
        cost = price_usage(price_key, Usage(HELLO_WORDS, REPLY_WORDS))
        assert available(payer.user) == payer.start - cost
        calls = list(RoutedCall.objects.filter(user=payer.user).order_by("created_at"))
        assert [(c.key_source, c.fell_back, c.credits_charged) for c in calls][-1] == ("platform", True, cost)
        assert all(c.credits_charged == 0 for c in calls[:-1])
        statuses = [r["status"] for r in niyra.provider_requests(provider_path)]
        assert statuses[-1] == 200 and len(statuses) == 2 and statuses[0] != 200
        assert calls[-1].model == model

    def test_without_the_opt_in_a_stream_is_refused(self, niyra: Niyra, make_account: Any, store_key: Any) -> None:
        payer = _byok_user(make_account, store_key, "anthropic", "ratelimit")

        with pytest.raises(anthropic.RateLimitError):
            _claude(niyra, payer.user, stream=True)

        payer.assert_nothing_billed()
        assert len(niyra.provider_requests("/anthropic/v1/messages")) == 1
