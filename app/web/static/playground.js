// The Contexis playground: a client of the runtime's own API, with no framework and no build step.
// Everything shown comes from /v1/models, /api/v1/render, /api/v1/chat (streamed) and /api/v1/test, called with
// the key the user gives (kept in sessionStorage: this tab only), so scopes and tenant rules are the API's.
"use strict";

const KEY_ITEM = "contexis-playground-key";
const $ = (id) => document.getElementById(id);
let turns = [];  // the conversation's turns, oldest first, sent as `messages`
let busy = false;

function key() { return sessionStorage.getItem(KEY_ITEM) || ""; }

function headers() {
  const sent = {"Content-Type": "application/json"};
  if (key()) sent.Authorization = "Bearer " + key();
  return sent;
}

function say(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

function text(node, value) { node.textContent = value === undefined || value === null || value === "" ? "–" : String(value); }

function cell(row, value, className) {
  const td = document.createElement("td");
  td.textContent = value;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function rows(table, items, fill) {
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const item of items) {
    const row = document.createElement("tr");
    fill(row, item);
    body.appendChild(row);
  }
}

// An API error, in the native shape {"error": {"code", "message"}} or OpenAI's {"error": {"message", "code"}}.
class ApiError extends Error {
  constructor(status, error) {
    super(error.message || ("HTTP " + status));
    this.status = status;
    this.code = error.code || "";
  }
}

async function failure(response) {
  let error = {};
  try { error = (await response.json()).error || {}; } catch (ignored) { /* not JSON: the status says it */ }
  return new ApiError(response.status, error);
}

function askForKey(message) {
  $("key-form").hidden = false;
  say(message, true);
  $("key").focus();
}

async function api(path, body) {
  const response = await fetch(path, {method: "POST", headers: headers(), body: JSON.stringify(body)});
  if (!response.ok) throw await failure(response);
  return response;
}

function reportError(error) {
  if (error.status === 401) {
    askForKey("This runtime needs an API key: " + error.message);
  } else {
    say((error.code ? error.code + ": " : "") + error.message, true);
  }
  guardrailFromError(error);
}

async function loadContexts() {
  const tenant = $("tenant").value.trim();
  const query = tenant ? "?tenant_id=" + encodeURIComponent(tenant) : "";
  const response = await fetch("/v1/models" + query, {headers: headers()});
  if (response.status === 401) {
    askForKey("This runtime needs an API key (a key with chat:invoke; test:run to run tests).");
    return;
  }
  if (!response.ok) { reportError(await failure(response)); return; }
  const models = (await response.json()).data;
  const select = $("context");
  const chosen = select.value;
  select.replaceChildren();
  for (const model of models) {
    const option = document.createElement("option");
    option.value = option.textContent = model.id;
    select.appendChild(option);
  }
  if (models.some((model) => model.id === chosen)) select.value = chosen;
  say(models.length ? models.length + " context(s) available." : "No context available for this tenant.");
}

function requestBody(message) {
  const topK = parseInt($("top-k").value, 10);
  return {
    context: $("context").value,
    tenant_id: $("tenant").value.trim(),
    query: message,
    top_k: Number.isNaN(topK) ? 0 : topK,
    data: {user_input: message},
    messages: turns,
  };
}

function addTurn(role, content) {
  const item = document.createElement("li");
  item.className = "turn " + role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : role === "assistant" ? $("context").value : "Error";
  const body = document.createElement("span");
  body.className = "content";
  body.textContent = content;
  item.append(who, body);
  $("conversation").appendChild(item);
  item.scrollIntoView({block: "end"});
  return body;
}

function showRendered(rendered) {
  text($("prompt"), rendered.prompt);
  const asked = rendered.models.map((model) => model.id);
  $("models-asked").dataset.first = asked[0] || "";
  text($("models-asked"), asked.length ? asked.join(" → ") : "none: the prompt is the answer");
  const mode = rendered.mode ? "mode " + rendered.mode : "no memory search";
  const degraded = rendered.degraded ? "degraded: " + rendered.degraded : "not degraded";
  $("retrieval").textContent = rendered.sources.length + " match(es), " + mode + ", " + degraded;
  $("retrieval").classList.toggle("degraded", Boolean(rendered.degraded));
  rows($("sources"), rendered.sources, (row, source) => {
    cell(row, source.source);
    cell(row, Number(source.score).toFixed(3));
  });
}

function resetInspector() {
  for (const id of ["request-id", "model-served", "tokens", "cost", "latency"]) text($(id), "");
  showTools([]);
  $("guardrails").replaceChildren();
  $("guardrails-none").textContent = "No guardrail acted.";
}

function guardrail(action) {
  const item = document.createElement("li");
  item.textContent = action;
  $("guardrails").appendChild(item);
  $("guardrails-none").textContent = "";
}

function guardrailFromError(error) {
  if (/^(guardrail_|citation_missing|no_sources)/.test(error.code || "")) guardrail(error.code + ": " + error.message);
}

function showTools(tools) {
  $("tools-none").textContent = tools.length ? "" : "No tool was called.";
  $("tools").hidden = !tools.length;
  rows($("tools"), tools, (row, tool) => {
    cell(row, tool.name);
    cell(row, tool.ok ? "ok" : "failed", tool.ok ? "ok" : "not-ok");
    cell(row, tool.ms + " ms");
  });
}

// The done event: model, usage, sources, request id; tools, guardrails and cost when the runtime reports them.
function showDone(done, served, timing) {
  text($("request-id"), done.request_id);
  const first = $("models-asked").dataset.first;
  const model = served || done.model;
  text($("model-served"), model && first && model !== first ? model + " (fallback from " + first + ")" : model || "none");
  const usage = done.usage;
  text($("tokens"), usage ? (usage.prompt_tokens ?? "?") + " in / " + (usage.completion_tokens ?? "?") + " out" : "not reported");
  const cost = done.cost_usd ?? (done.cost && done.cost.usd);
  text($("cost"), cost === undefined || cost === null ? "not reported" : "$" + Number(cost).toFixed(6));
  text($("latency"), timing);
  if (Array.isArray(done.tools)) showTools(done.tools);
  const actions = done.guardrails || [];
  for (const action of actions) guardrail(typeof action === "string" ? action : JSON.stringify(action));
  for (const kind of done.redacted || []) guardrail("redacted: " + kind);
}

// Server-sent events from a fetch body: each block's `event:` and JSON `data:`.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) yield {name, data: JSON.parse(data)};
    }
  }
}

async function render(message) {
  const response = await api("/api/v1/render", requestBody(message));
  const rendered = await response.json();
  showRendered(rendered);
  return rendered;
}

async function send(message) {
  say("Asking " + $("context").value + "…");
  resetInspector();
  await render(message);
  addTurn("user", message);
  const answer = addTurn("assistant", "");
  const body = {...requestBody(message), stream: true};
  const started = performance.now();
  const response = await api("/api/v1/chat", body);
  let firstPiece = null, content = "", tools = [];
  for await (const event of events(response)) {
    const data = event.data;
    if (event.name === "error") throw new ApiError(response.status, data.error || {});
    if (typeof data.delta === "string") {
      if (firstPiece === null) firstPiece = performance.now() - started;
      content += data.delta;
      answer.textContent = content;
    } else if (typeof data.tool === "string") {
      tools.push({name: data.tool, ok: data.ok, ms: data.ms});
      showTools(tools);
    } else if (data.done) {
      const total = Math.round(performance.now() - started);
      const timing = total + " ms" + (firstPiece === null ? "" : " (first piece after " + Math.round(firstPiece) + " ms)");
      showDone(data, response.headers.get("X-Contexis-Model"), timing);
    }
  }
  turns = [...turns, {role: "user", content: message}, {role: "assistant", content}];
  say("Answered" + (turns.length > 2 ? " (turn " + turns.length / 2 + ")." : "."));
}

function verdictWhy(result) {
  if (result.failures.length) return result.failures.map((f) => f.assertion + ": " + f.message).join("; ");
  if (result.error) return result.error;
  if (result.skipped.length) return "not judged: " + result.skipped.join("; ");
  return "";
}

async function runTests() {
  $("tests-summary").textContent = "Running…";
  const response = await api("/api/v1/test", {context: $("context").value, tenant_id: $("tenant").value.trim()});
  const report = await response.json();
  const s = report.summary;
  $("tests-summary").textContent = s.cases + " case(s): " + s.passed + " passed, " + s.failed + " failed, " +
    s.errors + " errors, " + s.skipped + " skipped in " + s.seconds + " s" +
    (report.cut ? ": cut at the run's deadline, the cases not judged are errors" : "");
  rows($("tests"), report.cases, (row, result) => {
    cell(row, result.case);
    cell(row, result.mode);
    cell(row, result.status, result.status === "error" ? "error-verdict" : result.status);
    cell(row, verdictWhy(result));
  });
  say("Tests run for " + $("context").value + ".");
}

async function guarded(work) {
  if (busy) return;
  busy = true;
  for (const id of ["send", "render", "run-tests"]) $(id).disabled = true;
  try {
    await work();
  } catch (error) {
    if (error instanceof ApiError) {
      reportError(error);
      addTurn("error", (error.code ? error.code + ": " : "") + error.message);
    } else {
      say(String(error), true);
    }
  } finally {
    busy = false;
    for (const id of ["send", "render", "run-tests"]) $(id).disabled = false;
  }
}

function message() { return $("message").value.trim(); }

function start() {
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const typed = message();
    if (!typed) return;
    guarded(async () => { await send(typed); $("message").value = ""; $("message").focus(); });
  });
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("render").addEventListener("click", () => {
    const typed = message();
    guarded(async () => { resetInspector(); await render(typed); say("Rendered; the model was not called."); });
  });
  $("run-tests").addEventListener("click", () => guarded(runTests));
  $("reset").addEventListener("click", () => {
    turns = [];
    $("conversation").replaceChildren();
    say("New conversation.");
    $("message").focus();
  });
  $("setup").addEventListener("submit", (event) => event.preventDefault());
  $("tenant").addEventListener("change", () => guarded(loadContexts));
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_ITEM, $("key").value.trim());
    $("key").value = "";
    guarded(loadContexts);
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_ITEM);
    askForKey("Key forgotten.");
  });
  if (key()) $("key-form").hidden = false;
  guarded(loadContexts);
}

document.addEventListener("DOMContentLoaded", start);
