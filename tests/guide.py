"""The chat request of the guide (hugging-face.md), verbatim: shared by the tests and the e2e run."""

GUIDE_BODY = {
    "tenant_id": "",
    "context": "SupportBot",
    "component": "SupportBot",
    "query": "",
    "top_k": 0,
    "data": {"user_input": "hello"},
}
