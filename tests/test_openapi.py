"""The contract: `/openapi.json` is valid OpenAPI 3.1, matches the app's routes, and the app keeps it under fuzzing."""

from __future__ import annotations

import re

import pytest
import schemathesis
from helpers import KEYS_JSON, TESTER_KEY, bearer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES

from app import create_app
from app.config import Settings
from app.memory import open_memory

METHODS = {"get", "post", "put", "patch", "delete"}


def routes(app) -> dict[str, set[str]]:
    """Each route's methods, its path as OpenAPI writes it (Flask's `<name>` is OpenAPI's `{name}`)."""
    found: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        found.setdefault(path, set()).update(m.lower() for m in rule.methods if m.lower() in METHODS)
    return found


@pytest.fixture
def fuzz_app(project):
    env = {"CMP_PROJECT_ROOT": str(project), "CMP_AUTH_ENABLED": "true", "CMP_API_KEYS": KEYS_JSON}
    settings = Settings.from_env({**env, "CMP_PLAYGROUND": "true"}, dotenv_path=None)
    open_memory(settings).store("CustomerDocs").ingest([project / "docs" / "CustomerDocs"])
    return create_app(settings)


@pytest.mark.parametrize(("auth", "playground"), [(False, False), (True, False), (False, True), (True, True)])
def test_document_is_valid_openapi_and_covers_every_route(project, auth, playground):
    env = {"CMP_PROJECT_ROOT": str(project), "CMP_RATE_LIMIT": "5/second", "CMP_PLAYGROUND": str(playground).lower()}
    if auth:
        env.update(CMP_AUTH_ENABLED="true", CMP_API_KEYS=KEYS_JSON)
    app = create_app(Settings.from_env(env, dotenv_path=None))
    document = app.test_client().get("/openapi.json").get_json()
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert {path: set(ops) for path, ops in document["paths"].items()} == routes(app)
    for path in ("/api/v1/chat", "/v1/chat/completions", "/v1/responses"):
        chat = document["paths"][path]["post"]
        assert {"200", "400", "404", "413", "422", "429", "500", "502", "504"} <= set(chat["responses"])
        assert ("security" in chat) is auth
        assert ({"401", "403"} <= set(chat["responses"])) is auth


@pytest.mark.parametrize(
    ("documented_name", "schema_name"),
    [
        ("ChatRequest", "app.validation.CHAT_REQUEST_SCHEMA"),
        ("ChatCompletionRequest", "app.validation.OPENAI_CHAT_SCHEMA"),
        ("ResponseRequest", "app.web.responses_wire.RESPONSES_SCHEMA"),
    ],
)
def test_request_schemas_are_the_validators_own(client, documented_name, schema_name):
    import importlib

    module, _, name = schema_name.rpartition(".")
    schema = getattr(importlib.import_module(module), name)
    document = client.get("/openapi.json").get_json()
    documented = document["components"]["schemas"][documented_name]
    assert documented["required"] == schema["required"]
    for name, field in schema["properties"].items():
        assert field.items() <= documented["properties"][name].items()


# A query or data over the runtime's size limits is rejected with 413, which is as much a rejection as a 400.
FUZZ_CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]}}}
)


# Components of the example project and a template of each: SupportBot renders, CustomerDocs also searches memory.
TARGETS = [("SupportBot", "agent_response.md"), ("CustomerDocs", "search_response.md")]


def aimed(case, target):
    """A generated valid request aimed at an existing component, so fuzzing reaches memory and the renderer."""
    component, prompt_file = target
    body = dict(case.body)
    case.body = {**body, "component": component, "prompt_file": prompt_file}
    if case.path == "/v1/chat/completions":
        # An OpenAI request: the context is the model, and the last message must be the user's.
        case.body.update(model="SupportBot", messages=[*body["messages"], {"role": "user", "content": "hi"}])
    elif case.path == "/v1/responses":
        # A Responses request: the context is the model, and the input ends with the user's message.
        items = body.get("input") if isinstance(body.get("input"), list) else []
        case.body.update(model="SupportBot", input=[*items, {"role": "user", "content": "hi"}])
        case.body.pop("previous_response_id", None)
    else:
        case.body["context"] = "SupportBot"
        case.body["data"] = {**body.get("data", {}), "user_input": body.get("query", "hi")}
    return case


def strategy(operation):
    if operation.method.upper() != "POST":
        return operation.as_strategy()
    return st.one_of(
        operation.as_strategy(),
        operation.as_strategy(GenerationMode.NEGATIVE),
        st.tuples(operation.as_strategy(), st.sampled_from(TARGETS)).map(lambda pair: aimed(*pair)),
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/chat"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/api/v1/render"),
        ("POST", "/api/v1/test"),
        ("GET", "/playground"),
        ("GET", "/v1/models"),
        ("POST", "/v1/responses"),
        ("GET", "/v1/responses/{response_id}"),
        ("DELETE", "/v1/responses/{response_id}"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/version"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ],
)
def test_fuzzed_requests_get_no_server_error_and_documented_answers(fuzz_app, method, path):
    # schemathesis' pytest fixture loader does not run on pytest 9, so its strategies are driven directly;
    # call_and_validate runs every default check: no 5xx, documented status, content type, headers and body.
    operation = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app, config=FUZZ_CONFIG)[path][method]
    statuses: set[int] = set()

    @given(case=strategy(operation))
    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def call(case):
        statuses.add(case.call_and_validate(headers=bearer(TESTER_KEY)).status_code)

    call()
    if method == "POST":
        # The three kinds of request each reached their answer: rendered, rejected, not found.
        assert {200, 400, 404} <= statuses
