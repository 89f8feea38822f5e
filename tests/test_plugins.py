"""User plug-ins by dotted path, through the real gateway: legacy signatures, fan-out, streams, and bugs."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from .conftest import KEY, passthrough_config
from .http import request


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def test_legacy_prompter_by_dotted_path_with_the_builtin_chat_mapper(gateway: Any, tgi: str) -> None:
    entry = {"path": "/generate", "in": "chatReqOpenAItoTGI", "out": "chatAnsTGItoOpenAI"}
    entry["prompter"] = "tests.plugins_example:shout"
    gw = gateway(passthrough_config(tgi, {"/chat/completions": entry}))
    client = openai.OpenAI(base_url=gw.url, api_key=KEY, max_retries=0)
    # the prompter upper-cases: the simulator then sees <<SAY:...>>, not its directive, and answers its default
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "<<say:x>>"}])
    assert answer.choices[0].message.content == "Hello! I am a simulated model. You said: <<SAY:X>>"


def test_fanout_from_a_user_mapper(gateway: Any, echo_upstream: str) -> None:
    entry = {"in": "tests.plugins_example:fan_out_twice", "out": "tests.plugins_example:count_answers"}
    gw = gateway(passthrough_config(echo_upstream, {"/echo": entry}))
    reply = request("POST", gw.url + "/echo", headers=auth(), body={"q": 1})
    assert reply.json() == {"answers": 2, "copies": ['{"copy":1,"q":1}', '{"copy":2,"q":1}']}


def test_answer_mapper_asks_only_for_encodings_it_can_decode(gateway: Any, echo_upstream: str) -> None:
    gw = gateway(passthrough_config(echo_upstream, {"/echo": {"out": "tests.plugins_example:wrap_answer"}}))
    reply = request("GET", gw.url + "/echo", headers={**auth(), "Accept-Encoding": "br, zstd"})
    assert reply.json()["wrapped"]["headers"]["Accept-Encoding"] == "gzip, deflate"


def test_a_bug_in_a_user_mapper_is_an_openai_500_and_the_gateway_goes_on(
    gateway: Any, echo_upstream: str, caplog: pytest.LogCaptureFixture
) -> None:
    gw = gateway(passthrough_config(echo_upstream, {"/echo": {"in": "tests.plugins_example:crash"}, "/plain": None}))
    reply = request("POST", gw.url + "/echo", headers=auth(), body={})
    assert reply.status == 500
    assert reply.json()["error"]["message"] == "The gateway had an error while processing your request."
    assert "a bug in a user mapper" not in reply.body.decode()
    assert any("a bug in a user mapper" in str(r.exc_info) for r in caplog.records if r.exc_info)
    assert request("GET", gw.url + "/plain", headers=auth()).body == b"just text"


def test_a_user_stream_translator(gateway: Any, echo_upstream: str) -> None:
    entry = {"in": "tests.plugins_example:stream_request", "out": "tests.plugins_example:upper_stream"}
    gw = gateway(passthrough_config(echo_upstream, {"/words": entry}))
    ok = request("POST", gw.url + "/words?say=hello,world", headers=auth(), body={})
    assert (ok.status, ok.body) == (200, b"HELLO WORLD [END]")
    broken = request("POST", gw.url + "/words?say=fine,boom,never", headers=auth(), body={})
    assert broken.status == 200  # the stream had started: the error ends it as the translator says
    assert broken.body == b"FINE [ERROR 500: The gateway had an error while processing your request.]"


def test_a_mapped_post_without_a_body_is_a_400(gateway: Any, tgi: str) -> None:
    entry = {"path": "/generate", "in": "chatReqOpenAItoTGI", "out": "chatAnsTGItoOpenAI", "template": "chatml"}
    gw = gateway(passthrough_config(tgi, {"/chat/completions": entry}))
    reply = request("POST", gw.url + "/chat/completions", headers=auth())
    assert reply.status == 400 and reply.json()["error"]["message"] == "this endpoint expects a JSON body"


def test_payloads_too_deep_to_forward_are_a_400(gateway: Any, tgi: str) -> None:
    entry = {"path": "/generate", "in": "chatReqOpenAItoTGI", "out": "chatAnsTGItoOpenAI", "template": "chatml"}
    gw = gateway(passthrough_config(tgi, {"/chat/completions": entry}))
    # Valid JSON nested 300 levels deep: it parses, but the TGI request cannot carry it (orjson writes 255 levels).
    depth = 300
    schema = '{"type":"object","properties":{"x":' * depth + '{"type":"object","properties":{}}' + "}}" * depth
    body = (
        '{"model":"m","messages":[{"role":"user","content":"hi"}],'
        '"response_format":{"type":"json_schema","json_schema":{"name":"deep","schema":' + schema + "}}}"
    )
    reply = request(
        "POST", gw.url + "/chat/completions", headers={**auth(), "Content-Type": "application/json"}, body=body
    )
    assert reply.status == 400
    assert reply.json()["error"]["message"].startswith("the request cannot be forwarded: ")
