"""Hardening, third pass (issue 24): what a fault and abuse probe broke, on real parts.

SQLite memory under a low open-file limit in a real gunicorn; (PostgreSQL stopped with SIGSTOP is in
test_memory_postgres.py).
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from helpers import EXAMPLE, SEARCH_BODY, Server

from app.memory.sqlite import SqliteStore

# -- 2. SQLite connections are bounded per process -----------------------------------------------------------


def open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_many_tenant_stores_under_a_low_open_file_limit_all_answer(tmp_path: Path) -> None:
    """16 threads x 40 tenant stores under `ulimit -n 512`: a connection kept per (thread, store) needed
    ~3 descriptors each (database, WAL, shared memory) and ran out; bounded connections all answer, and the
    worker's descriptors come back down."""
    root = tmp_path / "project"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("*.db", "*.db-*"))
    tenants = [f"t{number:02d}" for number in range(40)]
    for tenant in tenants:
        note = tmp_path / f"{tenant}.md"
        note.write_text(f"# {tenant}\n\nThe refund code of {tenant} is R-{tenant}.\n")
        SqliteStore(root, "CustomerDocs", tenant).ingest([note])
    server = Server("--root", str(root), "--workers", "1", "--threads", "16", open_files=512)
    try:
        (worker,) = server.workers()
        before = open_files(worker)

        def ask(number: int) -> tuple[int, str]:
            tenant = tenants[number % len(tenants)]
            body = {**SEARCH_BODY, "tenant_id": tenant, "query": f"refund code {tenant}"}
            response = requests.post(f"{server.url}/api/v1/chat", json=body, timeout=30)
            return response.status_code, response.text

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(640)))
        failed = [text for status, text in answers if status != 200]
        assert not failed, f"{len(failed)} of 640 failed, first: {failed[0][:300]}"
        assert all("R-t" in text for _, text in answers)  # each tenant's own document was found
        assert open_files(worker) - before < 150, "connections are not bounded"
    finally:
        server.stop()
