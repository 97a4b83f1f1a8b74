"""Project templates for `ctx init` and `ctx generate context`: a context, its prompt and its memory that serve at
once on both APIs.

Every template works from an OpenAI client's messages alone: `user_input` is the last user message there (and
`data.user_input` on `/api/v1/chat`), every other variable has a default (`| default(...)`), and the testing
cases are `mode: prompt`, so `ctx test` passes without a model.
"""

from __future__ import annotations

from pathlib import Path
from string import Template

TEMPLATES = ("support", "rag", "agent")
DEFAULT_NAMES = {"support": "SupportBot", "rag": "DocsBot", "agent": "Agent"}

_HISTORY = """{% if messages and not history_in_turns %}
Conversation so far:
{% for m in messages %}
{{ m.role | capitalize }}: {{ m.content }}
{% endfor %}
{% endif %}
"""

_PERSONA = """You are {{ context.name }}. {{ context.role.persona }}
Tone: {{ context.guardrails.tone }}. Format: {{ context.guardrails.format }}.
Answer in {{ language | default("the language of the question") }}.
{% if context.role.limitations %}
Limitations:
{% for item in context.role.limitations %}
- {{ item }}
{% endfor %}
{% endif %}
"""

_PROMPTS = {
    "support": _PERSONA
    + """{% if results %}
Relevant knowledge:
{% for r in results %}
- [{{ r.source }}] {{ r.content }}
{% endfor %}
{% endif %}
"""
    + _HISTORY
    + """
User: {{ user_input }}
Assistant:
""",
    "rag": _PERSONA
    + """Answer only from the knowledge below and cite each fact with its source in square brackets.
If the knowledge does not answer the question, say so.

{% if results %}
Knowledge:
{% for r in results %}
[{{ loop.index }}] ({{ r.source }}) {{ r.content }}
{% endfor %}
{% else %}
Knowledge: none found for "{{ query | default(user_input) }}".
{% endif %}
"""
    + _HISTORY
    + """
User: {{ user_input }}
Assistant:
""",
    "agent": _PERSONA
    + """Work in at most {{ max_steps | default(5) }} numbered steps: say what you will do, do it, then give the answer
on a last line starting with "Answer:".
{% if results %}
Notes you may use:
{% for r in results %}
- [{{ r.source }}] {{ r.content }}
{% endfor %}
{% endif %}
"""
    + _HISTORY
    + """
Goal: {{ goal | default(user_input) }}
Assistant:
""",
}

_ROLES = {
    "support": (
        "A friendly, concise customer support agent.",
        ["Answer questions about the product", "Explain how to get started"],
        ["Never asks for passwords or payment card numbers", "Hands off to a human when unsure"],
        "warm and professional",
        "short paragraphs, plain text",
    ),
    "rag": (
        "An assistant that answers from the project's documents and cites them.",
        ["Answer from the documents in docs/"],
        ["Never answers beyond the documents", "Never invents a source"],
        "precise and neutral",
        "short answers with [source] citations",
    ),
    "agent": (
        "An assistant that plans a task in small steps before answering.",
        ["Break a goal into steps", "Explain each step briefly"],
        ["Never claims to have run a tool or visited a site", "Stops after the last step"],
        "calm and direct",
        "numbered steps, then one answer line",
    ),
}

_CONTEXT = """name: $name
version: "0.1.0"
description: $description
role:
  persona: $persona
  capabilities:
$capabilities
  limitations:
$limitations
tools: []
guardrails:
  tone: $tone
  format: $format
  max_tokens: 512
  temperature: 0.3
memory:
  component: $name        # searched with the question; `ctx memory ingest --component $name docs/$name`
testing:
  # `mode: prompt` cases check the rendered prompt and never call the model: `ctx test` passes without one.
  cases:
    - name: renders-the-question
      mode: prompt
      input: How do I get started?
      expect_contains: ["You are $name", "How do I get started?"]
      expect_not_contains: "{{"
    - name: states-the-limits
      mode: prompt
      input: hello
      expect_contains: "$first_limitation"
    - name: language-defaults-and-can-be-set
      mode: prompt
      input: hello
      data: {language: French}
      expect_contains: Answer in French.
"""

_DOC = """# Getting started with $name

This folder holds the documents $name answers from. Add Markdown, text, reStructuredText, HTML or JSON Lines
files here, then run `ctx memory ingest --component $name docs/$name` to (re)build its memory: unchanged files
are skipped, changed ones replaced.

A question such as "How do I get started?" then finds this paragraph, and the prompt cites it by its file name.
"""

_MEMORY_CONFIG = """# How $name's memory is chunked and searched (`ctx memory ingest` builds its database here).
chunk_size: 600
chunk_overlap: 80
top_k: 4
"""

ENV_EXAMPLE = """# Copy to .env in the folder you run `ctx` from (the environment wins; an empty value is unset).
# Without HF_TOKEN and HF_MODEL_ID the server answers with the rendered prompt: everything but the model works.
HF_TOKEN=
HF_MODEL_ID=
# e.g. HF_MODEL_ID=meta-llama/Llama-3.1-8B-Instruct (optionally :fastest, :cheapest or :<provider>)
# HF_EMBED_MODEL_ID=sentence-transformers/all-MiniLM-L6-v2   # memory searched by meaning as well as by keywords
# CMP_LOCKED=true                                           # not ready while the project differs from context.lock.json
"""


GITIGNORE = """# What `ctx` makes in a project that is not a source of it (written by `ctx init`).
# The state directory (CMP_STATE_DIR's default): the usage ledger, stored responses, the response cache.
.contexis/
# Secrets: a model's token goes in .env; only the example is committed.
.env
.env.*
!.env.example
# The databases `ctx memory ingest` builds from docs/ (tenants' own documents too): data, rebuilt by ingesting.
memory/**/*.db
memory/**/*.db-wal
memory/**/*.db-shm
"""
# What a project's .gitignore must say, when `ctx init` finds one already: the state and the secrets.
MUST_IGNORE = (".contexis/", ".env")


def context_files(template: str, name: str) -> dict[str, str]:
    """The files of one context made from `template`, by their path under the project root."""
    persona, capabilities, limitations, tone, form = _ROLES[template]
    values = {
        "name": name,
        "description": f"{name}, made by `ctx init --template {template}`.",
        "persona": persona,
        "capabilities": "\n".join(f"    - {item}" for item in capabilities),
        "limitations": "\n".join(f"    - {item}" for item in limitations),
        "first_limitation": limitations[0],
        "tone": tone,
        "format": form,
    }
    return {
        f"contexts/{name}/{name.lower()}.ctx": Template(_CONTEXT).substitute(values),
        f"prompts/{name}/agent_response.md": _PROMPTS[template],
        f"memory/{name}/memory_config.yaml": Template(_MEMORY_CONFIG).substitute(values),
        f"docs/{name}/getting-started.md": Template(_DOC).substitute(values),
    }


def project_files(template: str, name: str) -> dict[str, str]:
    """A whole project: one context from `template`, and the `.env.example` to start from."""
    return {**context_files(template, name), ".env.example": ENV_EXAMPLE}


def unignored(gitignore: str) -> list[str]:
    """The entries of `MUST_IGNORE` an existing .gitignore's text does not name (leading and trailing slashes
    aside): a hint to add them, since `ctx init` never changes a file it did not write."""
    named = {line.strip().strip("/") for line in gitignore.splitlines()}
    return [entry for entry in MUST_IGNORE if entry.strip("/") not in named]


def existing(root: Path, files: dict[str, str]) -> list[str]:
    """The paths of `files` already present under `root`: a scaffold never overwrites."""
    return [rel for rel in files if (root / rel).exists()]


def write(root: Path, files: dict[str, str]) -> None:
    """Create `files` under `root` (with their folders)."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
