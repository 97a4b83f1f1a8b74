"""The request pipeline shared by the HTTP API and the CLI: context → guardrails → memory → cache → prompt →
provider → guardrails.

It knows nothing of HTTP: `app.web` turns requests into `ChatRequest`s and answers into responses.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from app.cache import CachedAnswer, Lookup, ResponseCache
from app.config import Settings
from app.contexts import ContextStore
from app.errors import BadRequest
from app.guardrails import Guard, Guardrails
from app.lock import ProjectLock
from app.memory import Retrieval, SearchResult, open_memory
from app.observability import RuntimeMetrics
from app.prompts import PromptFile, PromptRenderer, TemplateData, system_message
from app.providers import build_classifier, build_embedder, build_provider, structured
from app.providers.base import Choice, Generation, GenerationParams, TokenStream, ToolCall, Turn, Usage
from app.routing import ModelChain, ModelRouter, chain_of
from app.tools import Inputs, Toolbox, ToolRun
from app.usage import open_meter
from app.validation import ChatRequest, content_text

_tracer = trace.get_tracer(__name__)
# Template variables whose values the cache key holds by themselves: the context's digest, the memory matches, the
# conversation, the tenant.
_IN_KEY = frozenset({"context", "results", "messages", "tenant_id"})


@dataclass(frozen=True)
class Prepared:
    """A request's resolved context, its memory matches and what its prompt is rendered from: what the response
    cache needs to tell the prompt without rendering it."""

    context: dict[str, Any]
    results: list[SearchResult]
    request: ChatRequest  # as the guardrails passed it (personal data redacted)
    template: PromptFile
    variables: dict[str, Any]
    degraded: str = ""  # why memory searched keywords only, when it had to
    chain: ModelChain | None = None  # the context's models, when its file names them (`model:`)
    guard: Guard | None = None  # the request's guardrails, when its context enforces any
    mode: str = ""  # how memory searched (hybrid, vector, keyword), for `POST /api/v1/render`

    def sources(self) -> list[dict[str, Any]]:
        """The memory matches a response names, so a client can cite them."""
        return [{"id": r.id, "source": r.source, "score": r.score} for r in self.results]

    @property
    def as_passed(self) -> Callable[[str], str] | None:
        """A text of the request as the guardrails passed it on (`Guard.as_passed`); None when every text passes
        as it is (no guard, or one that does not redact)."""
        return self.guard.as_passed if self.guard and self.guard.policy.pii != "off" else None


@dataclass(frozen=True)
class Rendered(Prepared):
    """A prepared request and the prompt it produced."""

    prompt: str = field(kw_only=True)


_PREPARED = operator.attrgetter(*(f.name for f in fields(Prepared)))  # a Rendered's fields but its prompt, in order


@dataclass(frozen=True)
class Answer:
    """What one chat request produced."""

    rendered: str
    model: str | None
    sources: list[dict[str, Any]]
    usage: Usage | None = None
    finish_reason: str = "stop"
    degraded: str = ""
    served: str | None = None  # the chain entry that answered, when the context names its models
    tool_calls: tuple[ToolCall, ...] = ()  # the tools the model asks the client to call (`finish_reason` says so)
    choices: tuple[Choice, ...] = ()  # every answer of the model (n of them), the first included; () without one
    tools: list[dict[str, Any]] | None = None  # the context's own tools the runtime called, when it has tools
    redacted: tuple[str, ...] = ()  # the personal data types the guardrails replaced, in and out
    cache: str = ""  # what the response cache did (hit, semantic-hit, miss, bypass); "" when the context has none
    # A text of the request as the guardrails passed it on (personal data redacted): what a caller keeps of it;
    # None when they pass every text as it is (no guardrails, or `pii: off`), so a caller need not copy any.
    as_passed: Callable[[str], str] | None = None


@dataclass(frozen=True)
class StreamedAnswer:
    """What one streamed chat request produces: the model's deltas, and the memory sources known up front."""

    stream: TokenStream
    sources: list[dict[str, Any]]
    degraded: str = ""
    served: str | None = None  # as `Answer.served`
    tools: list[dict[str, Any]] | None = None  # the context tools called, filled in as each call ends
    cache: str = ""  # as `Answer.cache`
    as_passed: Callable[[str], str] | None = None  # as `Answer.as_passed`


class Runtime:
    """The services of one project root, built once per process from the settings."""

    def __init__(self, settings: Settings, metrics: RuntimeMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or RuntimeMetrics()
        self.contexts = ContextStore(settings.project_root)
        self.prompts = PromptRenderer(settings.project_root, settings.max_prompt_chars, settings.render_timeout)
        self.provider = build_provider(settings, self.metrics)
        # Contexts that name their models (`model:`) go through it; models are called only with HF_TOKEN.
        self.router = ModelRouter(settings, self.metrics) if settings.hf_token else None
        self.embedder = build_embedder(settings, self.metrics)
        self.memory = open_memory(settings, self.embedder)
        catalog = self.router.catalog if self.router else None
        self.meter = open_meter(settings, self.metrics, catalog, metered=bool(self.provider or self.router))
        self.tools = Toolbox(settings, self.metrics)
        self.lock = ProjectLock(settings.project_root)
        self.guardrails = Guardrails(settings, self.metrics, build_classifier(settings))
        self.cache = ResponseCache(settings, self.metrics, self.embedder, self.lock.started_hash or "")

    def problems(self) -> list[str]:
        """Why the runtime cannot serve now (for `/readyz`): invalid contexts, memory unreachable."""
        problems = self.contexts.problems()
        locked = self.lock.problem() if self.settings.locked else ""
        found = [self.memory.problem(), self.meter.problem(), locked]
        return [*problems, *(problem for problem in found if problem)]

    def calls_model(self, context: dict[str, Any]) -> bool:
        """Whether requests to `context` reach a model: its chain, or HF_MODEL_ID."""
        return bool(self.provider or (self.router and chain_of(context)))

    def chains(self) -> dict[str, list[dict[str, str]]]:
        """Each valid context's models in the order they are tried (`/version`): its chain, or HF_MODEL_ID."""
        return {name: self.models(self.contexts.load(path)) for name, path in self.contexts.available().items()}

    def models(self, context: dict[str, Any]) -> list[dict[str, str]]:
        """The models a request to `context` asks, in the order they are tried: its chain, or HF_MODEL_ID."""
        chain = chain_of(context)
        if chain:
            return chain.describe(self.settings)
        provider = self.provider
        return [{"id": provider.model_id, "endpoint": self.settings.hf_endpoint_public}] if provider else []

    def search(self, request: ChatRequest, component: str = "") -> Retrieval:
        """The memory matches of `component` (the request's by default) for the request's query (none without one)."""
        component = component or request.component
        if not request.query.strip():
            return Retrieval([], "keyword")
        attributes: dict[str, AttributeValue] = {
            "memory.component": component,
            "memory.top_k": request.top_k,
            "db.system": self.memory.system,
        }
        with _tracer.start_as_current_span("memory.search", attributes=attributes) as span:
            started = time.perf_counter()
            try:
                store = self.memory.store(component, request.tenant_id or None)
                retrieval = store.retrieve(request.query, request.top_k)
            except Exception:
                self.metrics.memory_search_errors.labels(component=component).inc()
                raise
            self.metrics.child(self.metrics.memory_search, component).observe(time.perf_counter() - started)
            span.set_attribute("memory.results", len(retrieval.results))
            span.set_attribute("memory.mode", retrieval.mode)
            if retrieval.degraded:
                span.set_attribute("memory.degraded", retrieval.degraded)
        return retrieval

    def render(self, request: ChatRequest) -> Rendered:
        """Resolve the context, search memory and render the prompt for `request` (`prepare`, then the render)."""
        return self._rendered(self.prepare(request))

    def prepare(self, request: ChatRequest) -> Prepared:
        """Resolve the context, search memory and the prompt's template for `request`: all but the render.

        Memory is the request's component when it names one other than its context; otherwise the
        context's `memory.component` when it names one (so a client that names only the context, as OpenAI
        clients do, still gets retrieval), else the request's component.
        """
        context = self.contexts.resolve(request.context, request.tenant_id)
        if self.lock.started_hash:
            # Which sources answered: the request's span carries the lock the server started with.
            trace.get_current_span().set_attribute("contexis.lock", self.lock.started_hash)
        guard = self.guardrails.guard(context, request)
        if guard:
            request = guard.check_request(request)
        chain = chain_of(context) if self.router else None
        named = request.component != request.context
        retrieval = self.search(request, "" if named else (context.get("memory") or {}).get("component", ""))
        results = guard.check_results(retrieval.results) if guard else retrieval.results
        variables = {
            **request.data,
            # The runtime's own variables win over same-named keys in `data`.
            "context": context,
            "data": TemplateData(request.data),  # `{{ data.key }}` as well as `{{ key }}`
            "results": [result.as_dict() for result in results],
            "tenant_id": request.tenant_id,
            "query": request.query,
            "messages": [{**message, "content": content_text(message["content"])} for message in request.messages],
            # True when the model gets the history as turns, so a template need not repeat it.
            "history_in_turns": self._history_in_turns(chain),
        }
        template = self.prompts.resolve(request.component, request.prompt_file)
        degraded, mode = retrieval.degraded, retrieval.mode
        return Prepared(context, results, request, template, variables, degraded, chain, guard, mode)

    def _rendered(self, prepared: Prepared) -> Rendered:
        started = time.perf_counter()
        prompt = self.prompts.render_file(prepared.template, prepared.variables)
        component = prepared.request.component
        self.metrics.child(self.metrics.prompt_render, component).observe(time.perf_counter() - started)
        return Rendered(*_PREPARED(prepared), prompt=prompt)

    def _history_in_turns(self, chain: ModelChain | None) -> bool:
        if chain and self.router:
            return self.router.history_in_turns(chain)
        return bool(self.provider and self.provider.history_in_turns)

    def answer(self, request: ChatRequest, request_id: str = "") -> Answer:
        """The model's text when a model is configured, the rendered prompt otherwise; an answer that must match
        the request's `response_format` is checked (`app.providers.structured`); a context's tools run in the tool
        loop first (`request_id` goes with each call)."""
        self.meter.open(request)
        prepared = self.prepare(request)
        sources = prepared.sources()
        guard, request = prepared.guard, prepared.request  # the request as the guardrails passed it
        chain, router, served = prepared.chain, self.router, []
        if chain and router:

            def generate(*args: Any) -> Generation:  # the chain, called as a provider is
                routed = router.generate(chain, *args)
                served.append(routed.served)
                return routed.result

        elif self.provider is None:
            rendered = self._rendered(prepared)
            redacted = guard.redacted if guard else ()
            return Answer(
                rendered.prompt,
                model=None,
                sources=sources,
                degraded=rendered.degraded,
                redacted=redacted,
                as_passed=rendered.as_passed,
            )
        else:
            generate = self.provider.generate
        params = _params(prepared, request)
        lookup, known = self._cached(request, prepared, params)
        if lookup and lookup.found:
            return _replayed(lookup.found, lookup.result, prepared)
        rendered = known or self._rendered(prepared)
        inputs = _inference_inputs(rendered, request, params)
        run = self._tool_run(rendered, request, request_id)
        if run is None:
            generation = structured.generate(generate, rendered.prompt, *inputs, budget=self.settings.hf_deadline)
        else:
            call = partial(structured.generate, generate, budget=self.settings.hf_deadline)
            generation = run.generate(call, Inputs(rendered.prompt, *inputs))
        if guard:
            generation = guard.check_generation(generation)
        model = served[-1] if served else self.provider.model_id if self.provider else None
        finish = generation.finish_reason or "stop"
        if lookup:
            usage, calls = generation.usage, generation.tool_calls
            self.cache.keep(
                lookup, generation.text, model, served[-1] if served else None, finish, sources, usage, calls
            )
        return Answer(
            rendered=generation.text,
            model=model,
            sources=sources,
            usage=generation.usage,
            finish_reason=finish,
            degraded=rendered.degraded if run is None else _degraded(rendered, run),
            served=served[-1] if served else None,
            tool_calls=generation.tool_calls,
            choices=generation.choices,
            tools=run.calls if run else None,
            redacted=guard.redacted if guard else (),
            cache=lookup.result if lookup else "",
            as_passed=rendered.as_passed,
        )

    def stream(self, request: ChatRequest, request_id: str = "", progress: bool = False) -> StreamedAnswer:
        """`answer`, piece by piece: the model's deltas, or the rendered prompt in one piece without a model.
        With `progress`, the stream has an empty piece after each tool call (`StreamedAnswer.tools` says which)."""
        self.meter.open(request)
        prepared = self.prepare(request)
        request = prepared.request  # as the guardrails passed it
        chain, router = prepared.chain, self.router
        if chain and router:

            def open_stream(*args: Any) -> TokenStream:  # the chain, called as a provider is
                return router.stream(chain, *args).result

        elif self.provider is None:
            rendered = self._rendered(prepared)
            return StreamedAnswer(
                TokenStream(iter([rendered.prompt]), model=None),
                rendered.sources(),
                rendered.degraded,
                as_passed=rendered.as_passed,
            )
        else:
            open_stream = self.provider.stream
        params = _params(prepared, request)
        lookup, known = self._cached(request, prepared, params)
        if lookup and lookup.found:
            found = lookup.found
            return StreamedAnswer(
                found.stream(),
                found.sources,
                prepared.degraded,
                found.served,
                cache=lookup.result,
                as_passed=prepared.as_passed,
            )
        rendered = known or self._rendered(prepared)
        inputs = _inference_inputs(rendered, request, params)
        run = self._tool_run(rendered, request, request_id)
        if run is None:
            stream = structured.stream(open_stream, rendered.prompt, *inputs)
        else:
            stream = run.stream(partial(structured.stream, open_stream), Inputs(rendered.prompt, *inputs), progress)
        stream = _checked(rendered, stream)
        served = stream.model if chain else None
        if lookup:
            stream = self.cache.recording(lookup, stream, rendered.sources(), served)
        degraded = rendered.degraded if run is None else _degraded(rendered, run)
        cache = lookup.result if lookup else ""
        tools = run.calls if run else None
        return StreamedAnswer(stream, rendered.sources(), degraded, served, tools, cache, rendered.as_passed)

    def _cached(
        self, request: ChatRequest, prepared: Prepared, params: GenerationParams
    ) -> tuple[Lookup | None, Rendered | None]:
        """The response cache's verdict for a request about to reach a model (None: its context has no cache), and
        the request rendered unless the cache answered it. A template's version with the values of the variables it
        reads tells the prompt's text (`PromptRenderer.version`), so an exact hit renders nothing; the text is the
        key when only it tells, and a context that reuses answers to similar questions renders first (a request
        whose render fails, a variable missing, must fail, not get a similar question's answer)."""
        context = prepared.context
        if not self.cache.caches(context):
            return None, None
        version = self.prompts.version(prepared.template)
        rendered: Rendered | None
        shown: dict[str, Any] | None
        if version is None:
            rendered = self._rendered(prepared)
            prompt, shown = rendered.prompt, None
        else:
            rendered = self._rendered(prepared) if self.cache.similar(context, request) else None
            variables = prepared.variables
            prompt = version.digest
            shown = {name: variables[name] for name in version.reads if name in variables and name not in _IN_KEY}
        chain = prepared.chain
        model = repr(chain.entries) if chain else self.provider.model_id if self.provider else ""
        policy = prepared.guard.policy.fingerprint if prepared.guard else ""
        lookup = self.cache.lookup(request, context, prompt, prepared.results, params, model, policy, shown)
        if lookup is None or lookup.found:
            return lookup, rendered
        rendered = rendered or self._rendered(prepared)
        if version is not None and self.prompts.version(prepared.template) != version:
            lookup.stale = True  # a template it names changed between the key and the render: answered, not kept
        return lookup, rendered

    def _tool_run(self, rendered: Rendered, request: ChatRequest, request_id: str) -> ToolRun | None:
        """The tool loop of a context with tools (None without: the request pays nothing more); its memory
        search is the request's own component and tenant, as retrieval's, and its results pass the request's
        guardrails before the model reads them, as retrieved chunks do."""
        toolset = self.tools.of(rendered.context)
        if toolset is None:
            return None
        component = (rendered.context.get("memory") or {}).get("component") or request.component

        def search(query: str, top_k: int) -> list[dict[str, Any]]:
            found = self.search(replace(request, query=query, top_k=top_k), component)
            return [result.as_dict() for result in found.results]

        guard = rendered.guard
        screen = guard.check_tool_results if guard and guard.policy.checks_tool_results else None
        return ToolRun.start(toolset, request_id, request.tenant_id, self.settings.hf_deadline, search, screen)


def _checked(rendered: Rendered, stream: TokenStream) -> TokenStream:
    """The stream behind the request's guardrails (its hold-back), when its context enforces any."""
    return rendered.guard.check_stream(stream) if rendered.guard else stream


def _degraded(rendered: Rendered, run: ToolRun) -> str:
    """Why the answer had less than configured: memory searched keywords only, an MCP server was down."""
    return ",".join(filter(None, (rendered.degraded, run.degraded)))


def _replayed(found: CachedAnswer, result: str, prepared: Prepared) -> Answer:
    """A cached answer as the pipeline's own: nothing generated (usage zero), the sources it was built from."""
    return Answer(
        rendered=found.text,
        model=found.model,
        sources=found.sources,
        usage=Usage(0, 0),
        finish_reason=found.finish_reason,
        degraded=prepared.degraded,
        served=found.served,
        cache=result,
        as_passed=prepared.as_passed,
    )


def _inference_inputs(
    rendered: Rendered, request: ChatRequest, params: GenerationParams
) -> tuple[GenerationParams, str, tuple[Turn, ...], tuple[Turn, ...]]:
    """What goes with the rendered prompt: sampling parameters, the chat system message, the history and the
    turns after the input."""
    return params, system_message(rendered.context), request.messages, request.after


def _params(prepared: Prepared, request: ChatRequest) -> GenerationParams:
    """The guardrails' sampling (the chain's `model.params` first), with what the client asked for where it
    stays within `guardrails.client_max` (a 400 past it) or, for `max_tokens` without one, within the context's
    own `max_tokens` (its ceiling); and the OpenAI fields the client set."""
    context = prepared.context
    guardrails = context.get("guardrails") or {}
    defaults = {**guardrails, **prepared.chain.params} if prepared.chain else guardrails
    overrides = request.overrides
    limits = guardrails.get("client_max", {})
    for name, ceiling in limits.items():
        if overrides.get(name, 0) > ceiling:
            raise BadRequest(
                f"{name}: {overrides[name]} is more than context {context['name']!r} allows ({ceiling})",
                code="invalid_request",
                param=name,
            )
    context_max = guardrails.get("max_tokens")
    max_tokens = overrides.get("max_tokens", defaults.get("max_tokens", GenerationParams.max_new_tokens))
    if context_max and "max_tokens" not in limits:
        max_tokens = min(max_tokens, context_max)
    # Built once: twenty fields, so a replace() of the guardrails' parameters would cost twice.
    return GenerationParams(
        max_new_tokens=max_tokens,
        temperature=overrides.get("temperature", defaults.get("temperature", GenerationParams.temperature)),
        top_p=overrides.get("top_p", defaults.get("top_p", GenerationParams.top_p)),
        stop=overrides.get("stop", ()),
        **request.options,
    )
