"""`ctx prompt render` and `ctx context validate`: a project's templates and contexts, without a model."""

from __future__ import annotations

import argparse
import json
import sys

from app.cli.common import fail, root_hint
from app.config import Settings


def cmd_prompt_render(args: argparse.Namespace, settings: Settings) -> int:
    """Print the prompt the chat route would send, without calling the model."""
    from app.runtime import Runtime
    from app.validation import parse_chat_request

    try:
        data = json.loads(args.data)
    except ValueError as exc:
        return fail(f"--data is not valid JSON: {exc}", 2)
    body = {"context": args.context, "component": args.component or args.context, "tenant_id": args.tenant}
    body.update(data=data, query=args.query, top_k=args.top_k)
    if args.prompt_file:
        body["prompt_file"] = args.prompt_file
    print(Runtime(settings).render(parse_chat_request(body)).prompt)
    return 0


def cmd_context_validate(args: argparse.Namespace, settings: Settings) -> int:
    """Check every context of the project; one `file: field: problem` line per fault."""
    from app.contexts import ContextStore

    store = ContextStore(settings.project_root)
    if not store.contexts_dir.is_dir():
        return fail(f"no contexts/ folder: {root_hint(settings)}", 1)
    problems = store.problems()
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    count = len(store.discover()[0])
    print(f"{count} context{'' if count == 1 else 's'} valid in {store.root}")
    return 0


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    prompt = commands.add_parser("prompt", help="prompt templates").add_subparsers(dest="prompt_command", required=True)
    render = prompt.add_parser("render", parents=[common], help="print a rendered prompt")
    render.add_argument("--context", required=True, help="the context, as a request names it")
    render.add_argument("--component", help="the prompts/ folder and memory to use (default: the context's name)")
    render.add_argument("--tenant", default="", help="render as this tenant (its context override and memory)")
    render.add_argument("--prompt-file", help="the template under prompts/COMPONENT/ (default: agent_response.md)")
    render.add_argument("--data", default="{}", help="JSON object of template variables")
    render.add_argument("--query", default="", help="search the component's memory for the template's results")
    render.add_argument("--top-k", type=int, default=0, help="memory results (default 0: the component's top_k)")
    render.set_defaults(handler=cmd_prompt_render)

    context = commands.add_parser("context", help="contexts").add_subparsers(dest="context_command", required=True)
    validate = context.add_parser("validate", parents=[common], help="validate every context of the project")
    validate.set_defaults(handler=cmd_context_validate)
