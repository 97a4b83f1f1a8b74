"""`make bench-profile`: where a gunicorn worker spends its time under wrk load, sampled by py-spy.

One worker (so one process holds every sample) serves the guide's request, rendered only or, with
`--model`, through the instant nginx endpoint (`--stream`: streamed, 200 tokens). py-spy's collapsed
stacks go to bench/out/profile-*.txt (load them into speedscope or flamegraph.pl); the summary printed
here is each function's share of the samples: inclusive (on the stack) and self (at the top of it).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from run import BIN, GUIDE_BODY, OUT, descendants, hf_env, instant_model, runtime, serving, wrk

_LOCATION = re.compile(r" \((?P<file>[^:]+):\d+\)$")


def _short(frame: str) -> str:
    """`render (jinja2/environment.py)`: the function and its file below site-packages or the repo."""
    match = _LOCATION.search(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "/lib/python3.11/", "wt-bench/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{frame[: match.start()]} ({path})"


def summarize(collapsed: Path, top: int) -> str:
    """Inclusive and self shares of the samples, per function, from py-spy's raw (collapsed) output."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_short(f) for f in stack.split(";")]
        n = int(count)
        total += n
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    lines = [f"{total} samples", "", "inclusive  function"]
    lines += [f"{100 * n / total:8.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", "self       function"]
    lines += [f"{100 * n / total:8.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="store_true", help="through the instant nginx model endpoint")
    parser.add_argument("--stream", action="store_true", help="a streamed answer through the nginx endpoint")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=128)
    parser.add_argument("--top", type=int, default=45)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    kind = "stream" if args.stream else "model" if args.model else "render"
    body = {**GUIDE_BODY, "stream": True} if args.stream else GUIDE_BODY
    collapsed = OUT / f"profile-{kind}.txt"
    with contextlib.ExitStack() as stack:
        env = {}
        if args.model or args.stream:
            ng = stack.enter_context(instant_model())
            env = hf_env(f"{ng.url}/stream/v1" if args.stream else f"{ng.url}/models")
        rt = stack.enter_context(serving(runtime(f"runtime-profile-{kind}", (1, args.threads), env)))
        url = f"{rt.url}/api/v1/chat"
        wrk(url, args.connections, 3, body)  # warm up: templates compiled, contexts cached
        worker = max(descendants(rt.proc.pid))  # timeout -> gunicorn master -> the one worker (newest pid)
        load = threading.Thread(target=wrk, args=(url, args.connections, args.seconds + 2, body))
        load.start()
        spy = [str(BIN / "py-spy"), "record", "--pid", str(worker), "--duration", str(args.seconds)]
        # --gil: only the thread holding the GIL is sampled, so the shares are shares of the CPU Python uses.
        spy += ["--gil", "--rate", "250", "--format", "raw", "--output", str(collapsed)]
        subprocess.run(spy, check=True, capture_output=True, timeout=args.seconds + 60)
        load.join()
    summary = summarize(collapsed, args.top)
    (OUT / f"profile-{kind}-summary.txt").write_text(summary + "\n")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
