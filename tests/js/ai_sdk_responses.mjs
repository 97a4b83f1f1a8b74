// The Vercel AI SDK's default OpenAI provider (`openai(id)` speaks the Responses API) against a served runtime.
// Usage: node ai_sdk_responses.mjs <base url> <case>; prints the case's outcome as one JSON line.
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, jsonSchema, Output, stepCountIs, streamText, tool } from "ai";

const [baseURL, which] = process.argv.slice(2);
const openai = createOpenAI({ baseURL, apiKey: "no-key-needed" });
const model = openai("SupportBot");

const cases = {
  async generate() {
    const result = await generateText({ model, system: "Be brief.", prompt: "hello" });
    return {
      text: result.text,
      finishReason: result.finishReason,
      usage: { input: result.usage.inputTokens, output: result.usage.outputTokens },
      responseId: result.response.id,
      modelId: result.response.modelId,
    };
  },
  async stream() {
    const result = streamText({ model, prompt: "hello" });
    const deltas = [];
    for await (const delta of result.textStream) deltas.push(delta);
    return { deltas, text: await result.text, finishReason: await result.finishReason, usage: await result.usage };
  },
  async conversation() {
    // Earlier turns as the SDK sends them: an assistant reply it got from this runtime goes back as a reference.
    const first = await generateText({ model, prompt: "Where is order 1234?" });
    const second = await generateText({
      model,
      messages: [{ role: "user", content: "Where is order 1234?" }, ...first.response.messages, { role: "user", content: "When?" }],
    });
    return { first: first.text, second: second.text };
  },
  async tools() {
    const weather = tool({
      description: "The weather in a city",
      inputSchema: jsonSchema({ type: "object", properties: { city: { type: "string" } }, required: ["city"] }),
      execute: async ({ city }) => ({ city, forecast: "sunny" }),
    });
    const result = await generateText({ model, prompt: "Weather? weather(city=Paris)", tools: { weather }, stopWhen: stepCountIs(3) });
    return {
      text: result.text,
      steps: result.steps.map((step) => ({
        finishReason: step.finishReason,
        calls: step.toolCalls.map((call) => ({ name: call.toolName, input: call.input })),
      })),
    };
  },
  async object() {
    const schema = jsonSchema({ type: "object", properties: { city: { type: "string" } }, required: ["city"], additionalProperties: false });
    const result = await generateText({ model, prompt: "Which city? city=Paris", output: Output.object({ schema }) });
    return { output: result.output };
  },
  async failure() {
    const errors = [];
    const result = streamText({ model, prompt: "hello", onError: ({ error }) => errors.push(String(error.message ?? error)) });
    let text = "";
    for await (const delta of result.textStream) text += delta;
    return { text, errors };
  },
};

try {
  console.log(JSON.stringify(await cases[which]()));
} catch (error) {
  console.log(JSON.stringify({ thrown: error.name, message: error.message, statusCode: error.statusCode ?? null }));
}
