#!/usr/bin/env python3
"""Load test of `moestream serve` on loopback: N concurrent streaming clients for a while,
with batching (--max-concurrent N) and one request at a time (--max-concurrent 1).

    python3 scripts/bench/serve_load.py --moestream target/release/moestream \
        [--model DIR] [--clients 32] [--seconds 120] [--max-tokens 32]

Every response is checked: complete (a finish reason, then [DONE]) and correct (its text
equals the answer the server gives to the same request alone, which the tests prove equal
to `moestream generate`). Reports aggregate generated tok/s, errors by kind, and the
server's RSS after warm-up and at the end. Needs `pip install openai` (scripts/tests/
requirements-openai.txt).
"""

import argparse
import asyncio
import json

import openai

from serve_common import Server, machine, now

PROMPTS = [f"Story {i}: write about the number {i * 7}." for i in range(8)]


async def one_stream(client, model, i, max_tokens):
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPTS[i]}], max_tokens=max_tokens,
        temperature=0.8, seed=i, stream=True, stream_options={"include_usage": True})
    text, finish, tokens = "", None, 0
    async for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    return text, finish, tokens


async def run_load(server, clients, seconds, max_tokens):
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0,
                                timeout=600)
    model = (await client.models.list()).data[0].id
    # Reference answers, one request at a time (also warms the server).
    expected = []
    for i in range(len(PROMPTS)):
        text, _, _ = await one_stream(client, model, i, max_tokens)
        expected.append(text)
    rss_start = server.rss_mib()
    stats = {"completed": 0, "wrong": 0, "incomplete": 0, "errors": {}, "tokens": 0}
    deadline = now() + seconds

    async def worker(w):
        k = w
        while now() < deadline:
            i = k % len(PROMPTS)
            k += clients
            try:
                text, finish, tokens = await one_stream(client, model, i, max_tokens)
            except openai.APIStatusError as e:
                stats["errors"][str(e.status_code)] = stats["errors"].get(str(e.status_code), 0) + 1
                await asyncio.sleep(0.05)
                continue
            except Exception as e:  # connection-level failures
                stats["errors"][type(e).__name__] = stats["errors"].get(type(e).__name__, 0) + 1
                continue
            stats["tokens"] += tokens
            if finish is None:
                stats["incomplete"] += 1
            elif text != expected[i]:
                stats["wrong"] += 1
            else:
                stats["completed"] += 1

    samples = []

    async def sample_rss():
        while now() < deadline:
            await asyncio.sleep(min(15.0, max(0.0, deadline - now())))
            samples.append(round(server.rss_mib(), 1))

    t0 = now()
    await asyncio.gather(sample_rss(), *(worker(w) for w in range(clients)))
    wall = now() - t0
    stats["wall_s"] = round(wall, 1)
    stats["tok_s"] = round(stats["tokens"] / wall, 1)
    stats["rss_start_mib"] = round(rss_start, 1)
    stats["rss_end_mib"] = round(server.rss_mib(), 1)
    stats["rss_every_15s_mib"] = samples
    await client.close()
    return stats


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moestream", required=True)
    ap.add_argument("--model")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batches", default="32,1", help="--max-concurrent values to compare")
    a = ap.parse_args()
    print(f"# {machine()}; {a.clients} streaming clients, {a.seconds:.0f} s each, "
          f"{a.max_tokens} tokens per request")
    results = {}
    for batch in [int(b) for b in a.batches.split(",")]:
        args = ["--max-concurrent", str(batch), "--max-queue", "256"]
        if a.model:
            args += ["--model", a.model]
        server = Server(a.moestream, args)
        try:
            r = asyncio.run(run_load(server, a.clients, a.seconds, a.max_tokens))
        finally:
            server.stop()
        results[batch] = r
        print(f"--max-concurrent {batch}: {json.dumps(r)}", flush=True)
    print("\n| --max-concurrent | completed | wrong | incomplete | errors | aggregate tok/s | RSS start -> end (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for b, r in results.items():
        print(f"| {b} | {r['completed']} | {r['wrong']} | {r['incomplete']} | {r['errors'] or 0} | "
              f"{r['tok_s']} | {r['rss_start_mib']} -> {r['rss_end_mib']} |")


if __name__ == "__main__":
    main()
