"""The Vercel AI SDK's default OpenAI provider (`openai(id)`, the Responses API) against `ctx serve`.

`tests/js` pins `ai` and `@ai-sdk/openai` (installed by `make test-tools` with `npm ci`); each case of
`ai_sdk_responses.mjs` runs in node against the served runtime, in front of a fake chat model on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from fake_hf import FakeHF, Reply, Stream, chat_events, completion, openai_model, sse
from helpers import MODEL, REPO, TOKEN, Server, guardrails_off

JS = REPO / "tests" / "js"
pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (JS / "node_modules").is_dir(),
    reason="needs node and tests/js/node_modules (make test-tools)",
)
USAGE = {"prompt_tokens": 87, "completion_tokens": 12}


@pytest.fixture
def served(project):
    """Run one case of the script against a served runtime whose fake model answers `replies`: its outcome, the fake.

    SupportBot's guardrails are off: these tests check the relay of every delta as sent.
    """
    guardrails_off(project)

    def run(case: str, *replies: Reply | Stream, workers: int = 1) -> tuple[dict, FakeHF]:
        with FakeHF(*replies) as fake:
            env = {"HF_TOKEN": TOKEN, "HF_MODEL_ID": MODEL, "HF_ENDPOINT": f"{fake.url}/v1", "HF_MAX_RETRIES": "0"}
            server = Server("--root", str(project), "--workers", str(workers), "--threads", "4", env=env)
            try:
                done = subprocess.run(
                    ["node", str(JS / "ai_sdk_responses.mjs"), f"{server.url}/v1", case],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
            finally:
                assert server.stop()[0] == 0
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1]), fake

    return run


def test_generate_text_reads_the_response_object(served):
    outcome, fake = served("generate", Reply(body=completion("Hello there", USAGE)))
    assert outcome["text"] == "Hello there"
    assert outcome["finishReason"] == "stop"
    assert outcome["usage"] == {"input": 87, "output": 12}
    assert outcome["responseId"].startswith("resp_")
    assert outcome["modelId"] == "SupportBot"
    sent = fake.seen[0].body["messages"]
    assert [m["role"] for m in sent] == ["system", "system", "user"]
    assert sent[1]["content"] == "Be brief."  # the SDK's system message, after the context's own


def test_stream_text_relays_every_delta_and_the_usage(served):
    outcome, _ = served("stream", Stream(chat_events(["Hel", "lo", "!"], USAGE)))
    assert outcome["deltas"] == ["Hel", "lo", "!"]
    assert (outcome["text"], outcome["finishReason"]) == ("Hello!", "stop")
    assert (outcome["usage"]["inputTokens"], outcome["usage"]["outputTokens"]) == (87, 12)


def test_a_conversation_refers_to_the_stored_answer_and_the_model_gets_it_as_a_turn(served):
    # The SDK sends its earlier assistant reply back as an `item_reference` to the stored response's item.
    # Two workers: each turn may reach either, and both read the one SQLite store of the pod.
    replies = (Reply(body=completion("Packed.")), Reply(body=completion("Tomorrow.")))
    outcome, fake = served("conversation", *replies, workers=2)
    assert outcome == {"first": "Packed.", "second": "Tomorrow."}
    sent = fake.seen[1].body["messages"]
    assert sent[1:3] == [
        {"role": "user", "content": "Where is order 1234?"},
        {"role": "assistant", "content": "Packed."},
    ]


def test_a_failure_mid_stream_reaches_the_sdk_as_an_error(served):
    events = [*chat_events(["Hel"])[:2], sse({"error": {"message": "CUDA out of memory"}})]
    outcome, _ = served("failure", Stream(events))
    assert outcome["text"] == "Hel"
    assert any("CUDA out of memory" in error for error in outcome["errors"])


def test_generate_text_runs_a_client_tool_and_answers_with_its_result(served):
    # The stand-in model calls the tool the prompt names, then answers the tool's result.
    outcome, fake = served("tools", Reply(body=openai_model))
    assert outcome["steps"] == [
        {"finishReason": "tool-calls", "calls": [{"name": "weather", "input": {"city": "Paris"}}]},
        {"finishReason": "stop", "calls": []},
    ]
    assert outcome["text"] == 'Tool results: call_0_weather={"city":"Paris","forecast":"sunny"}'
    assert fake.seen[0].body["tools"][0]["function"]["name"] == "weather"
    sent = fake.seen[1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool"]
    assert sent[2]["tool_calls"][0]["id"] == sent[3]["tool_call_id"] == "call_0_weather"


def test_output_object_sends_the_schema_and_reads_the_json_answer(served):
    outcome, fake = served("object", Reply(body=openai_model))
    assert outcome == {"output": {"city": "Paris"}}
    response_format = fake.seen[0].body["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["schema"]["required"] == ["city"]
