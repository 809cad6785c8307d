#!/usr/bin/env python3
"""Time to first token for a repeated long system prompt, with and without the prompt cache.

    python3 scripts/bench/serve_ttft.py --moestream target/release/moestream [--model DIR] \
        [--system-words 600] [--requests 5]

Sends `--requests` chats that share one long system prompt and differ in the user question,
one after another, to a server with the prompt cache on (default) and off
(--prompt-cache-entries 0). TTFT is the time from sending the request to the first
token's chunk. Reports each request's TTFT and cached token count.
"""

import argparse

import openai

from serve_common import Server, machine, now


def ttft_run(server, system, questions):
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=900)
    model = client.models.list().data[0].id
    rows = []
    for q in questions:
        t0 = now()
        first = None
        cached = None
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "system", "content": system}, {"role": "user", "content": q}],
            max_tokens=4, temperature=0, stream=True, stream_options={"include_usage": True},
            logprobs=True)
        for chunk in stream:
            # With logprobs every token makes a chunk, even one with no visible text (random
            # weights often pick those); the role chunk before prefill carries none.
            if first is None and any(c.logprobs or c.delta.content or c.finish_reason
                                     for c in chunk.choices):
                first = now() - t0
            if chunk.usage is not None:
                cached = chunk.usage.prompt_tokens_details.cached_tokens
                prompt = chunk.usage.prompt_tokens
        rows.append((first, cached, prompt))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moestream", required=True)
    ap.add_argument("--model")
    ap.add_argument("--system-words", type=int, default=600)
    ap.add_argument("--requests", type=int, default=5)
    a = ap.parse_args()
    words = "weather forecast rain sun wind cloud storm snow".split()
    system = "You are a forecaster. " + " ".join(words[i % len(words)] for i in range(a.system_words))
    questions = [f"Question {i}: will it rain on day {i}?" for i in range(a.requests)]
    print(f"# {machine()}; model {a.model or 'embedded tiny'}")
    for label, extra in [("cache on", []), ("cache off", ["--prompt-cache-entries", "0"])]:
        args = list(extra) + (["--model", a.model] if a.model else [])
        server = Server(a.moestream, args)
        try:
            rows = ttft_run(server, system, questions)
        finally:
            server.stop()
        cells = ", ".join(f"{t * 1000:.0f} ms ({c}/{p} cached)" for t, c, p in rows)
        later = [t for t, _, _ in rows[1:]]
        print(f"| {label} | {rows[0][0] * 1000:.0f} ms | {sum(later) / len(later) * 1000:.0f} ms | {cells} |")


if __name__ == "__main__":
    main()
