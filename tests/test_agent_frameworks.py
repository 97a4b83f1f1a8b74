"""Agent frameworks against `/v1`, unchanged: LangChain's `ChatOpenAI` and the Vercel AI SDK (node).

Each drives the served runtime in front of the stand-in model of `fake_hf`, which calls only the tools it is
sent and answers only the schema it is sent: a framework that gets its tool calls and objects back got them
through the runtime. The AI SDK is installed from the npm registry into a directory of this test run (skipped
only when npm is missing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from fake_hf import Reply, Stream, openai_model, openai_stream
from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

AGENT = Reply(body=openai_model)


class Person(BaseModel):
    """Someone named in the text."""

    name: str
    age: int


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def chat_model(live) -> ChatOpenAI:
    return ChatOpenAI(base_url=f"{live.url}/v1", api_key="unused", model="SupportBot", max_retries=0, timeout=10)


def test_langchain_bind_tools_gets_the_calls_and_answers_with_the_results(serve):
    fake, live, _ = serve(AGENT)
    llm = chat_model(live).bind_tools([get_weather])
    question = HumanMessage("What should I wear? get_weather(city=Paris)")
    called = llm.invoke([question])
    assert [(c["name"], c["args"], c["id"]) for c in called.tool_calls] == [
        ("get_weather", {"city": "Paris"}, "call_0_get_weather")
    ]
    assert fake.seen[0].body["tools"][0]["function"]["name"] == "get_weather"
    result = ToolMessage(get_weather.invoke(called.tool_calls[0]["args"]), tool_call_id=called.tool_calls[0]["id"])
    answer = llm.invoke([question, called, result])
    assert answer.content == "Tool results: call_0_get_weather=sunny in Paris"
    assert answer.tool_calls == []


def test_langchain_tool_choice_required_forces_a_call(serve):
    fake, live, _ = serve(AGENT)
    called = chat_model(live).bind_tools([get_weather], tool_choice="required").invoke("hello")
    assert [c["name"] for c in called.tool_calls] == ["get_weather"]
    assert fake.seen[0].body["tool_choice"] == "required"


def test_langchain_streams_the_calls_pieces_into_whole_calls(serve):
    _, live, _ = serve(Stream(openai_stream))
    chunks = list(chat_model(live).bind_tools([get_weather]).stream("get_weather(city=Paris) get_weather(city=Rome)"))
    assert len([c for c in chunks if c.tool_call_chunks]) >= 8  # the arguments arrived in pieces
    whole = sum(chunks[1:], chunks[0])
    assert isinstance(whole, AIMessageChunk)
    assert [(c["name"], c["args"]) for c in whole.tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Rome"}),
    ]


def test_langchain_with_structured_output_in_its_default_json_schema_mode(serve):
    fake, live, _ = serve(AGENT)
    person = chat_model(live).with_structured_output(Person).invoke("Who? name=Ada age=36")
    assert person == Person(name="Ada", age=36)
    sent = fake.seen[0].body["response_format"]
    assert (sent["type"], sent["json_schema"]["name"]) == ("json_schema", "Person")


AI_SDK_SCRIPT = r"""
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { generateText, streamText, tool, Output, stepCountIs } from 'ai';
import { z } from 'zod';

const provider = createOpenAICompatible({
  name: 'contexis', baseURL: process.env.BASE_URL, apiKey: 'unused', supportsStructuredOutputs: true,
});
const model = provider.chatModel('SupportBot');
const weather = tool({
  description: 'The weather in a city',
  inputSchema: z.object({ city: z.string() }),
  execute: async ({ city }) => `sunny in ${city}`,
});
const out = {};

const run = await generateText({
  model, prompt: 'What should I wear? get_weather(city=Paris)', tools: { get_weather: weather },
  stopWhen: stepCountIs(3), maxRetries: 0,
});
out.tool = {
  text: run.text,
  steps: run.steps.length,
  calls: run.steps[0].toolCalls.map((c) => [c.toolCallId, c.toolName, c.input]),
};

const person = await generateText({
  model, prompt: 'Who? name=Ada age=36', maxRetries: 0,
  output: Output.object({ schema: z.object({ name: z.string(), age: z.number().int() }) }),
});
out.object = person.output;

const streamed = streamText({
  model, prompt: 'get_weather(city=Paris) get_weather(city=Rome)', tools: { get_weather: weather }, maxRetries: 0,
});
out.stream = [];
for await (const part of streamed.fullStream) {
  if (part.type === 'tool-call') out.stream.push([part.toolCallId, part.toolName, part.input]);
  if (part.type === 'error') out.stream.push(['error', String(part.error)]);
}
console.log(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def ai_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with `ai`, `@ai-sdk/openai-compatible` and `zod` installed from the npm registry."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node and npm are needed for the Vercel AI SDK (Debian: apt-get install nodejs npm)")
    where = tmp_path_factory.mktemp("ai-sdk")
    (where / "package.json").write_text(json.dumps({"name": "ai-sdk-check", "private": True, "type": "module"}))
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "ai@6", "@ai-sdk/openai-compatible@2", "zod@4"],
        cwd=where,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (where / "check.mjs").write_text(AI_SDK_SCRIPT)
    return where


def test_the_vercel_ai_sdk_runs_a_tool_loop_builds_an_object_and_streams_calls(serve, ai_sdk):
    fake, live, _ = serve(AGENT, AGENT, AGENT, Stream(openai_stream))
    done = subprocess.run(
        ["node", "check.mjs"],
        cwd=ai_sdk,
        env={**os.environ, "BASE_URL": f"{live.url}/v1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["tool"] == {
        "text": "Tool results: call_0_get_weather=sunny in Paris",
        "steps": 2,
        "calls": [["call_0_get_weather", "get_weather", {"city": "Paris"}]],
    }
    assert out["object"] == {"name": "Ada", "age": 36}
    assert out["stream"] == [
        ["call_0_get_weather", "get_weather", {"city": "Paris"}],
        ["call_1_get_weather", "get_weather", {"city": "Rome"}],
    ]
    assert fake.seen[2].body["response_format"]["type"] == "json_schema"
