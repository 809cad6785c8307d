#!/usr/bin/env python3
"""Drives a running `moestream serve` with the official `openai` Python client.

    openai_client.py --base-url http://127.0.0.1:PORT/v1 --moestream path/to/moestream [--model DIR]

Checks chat and completions, streaming and not, against `moestream generate` run on the
same prompt with the same seed (the texts must be equal), plus usage, logprobs, tools,
model listing and the client-side view of errors. Exits non-zero on the first failure.
"""

import argparse
import json
import subprocess
import sys

import openai


def generate(binary, model, args):
    """Text of `moestream generate --json` (token texts plus the final tail)."""
    cmd = [binary, "generate", "--json", *args]
    if model:
        cmd += ["--model", model]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    text = ""
    for line in out.splitlines():
        obj = json.loads(line)
        text += obj.get("text", "")
    return text


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--moestream", required=True)
    ap.add_argument("--model", default=None)
    a = ap.parse_args()
    client = openai.OpenAI(base_url=a.base_url, api_key="unused", max_retries=0)
    name = client.models.list().data[0].id
    check(bool(name), f"models.list serves '{name}'")

    prompt = "Tell me about the sea."
    for temperature, seed in [(0.0, 1), (0.7, 42)]:
        want = generate(a.moestream, a.model, ["--prompt", prompt, "--max-tokens", "16",
                                               "--temperature", str(temperature), "--seed", str(seed)])
        r = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": prompt}],
            max_tokens=16, temperature=temperature, seed=seed)
        check(r.choices[0].message.content == want,
              f"chat (t={temperature}) equals moestream generate: {r.choices[0].message.content!r}")
        check(r.usage.completion_tokens == 16 or r.choices[0].finish_reason == "stop", "chat usage")
        stream = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": prompt}],
            max_tokens=16, temperature=temperature, seed=seed, stream=True,
            stream_options={"include_usage": True})
        text, finish, usage = "", None, None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                text += c.delta.content or ""
                finish = c.finish_reason or finish
        check(text == want, f"chat stream (t={temperature}) equals moestream generate")
        check(finish in ("stop", "length") and usage is not None and usage.prompt_tokens > 0,
              "chat stream ends with a finish reason and a usage chunk")

    raw = "Once upon a time"
    want = generate(a.moestream, a.model, ["--raw", "--prompt", raw, "--max-tokens", "12", "--temperature", "0"])
    r = client.completions.create(model=name, prompt=raw, max_tokens=12, temperature=0, logprobs=2)
    check(r.choices[0].text == want, "completion equals moestream generate --raw")
    check(len(r.choices[0].logprobs.tokens) == r.usage.completion_tokens, "completion logprobs per token")
    text = "".join(c.choices[0].text for c in client.completions.create(
        model=name, prompt=raw, max_tokens=12, temperature=0, stream=True))
    check(text == want, "completion stream equals moestream generate --raw")

    r = client.chat.completions.create(
        model=name, messages=[{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "hi"},
                              {"role": "assistant", "content": "hello"},
                              {"role": "user", "content": "what is the weather?"}],
        max_tokens=4, temperature=0, logprobs=True, top_logprobs=3,
        tools=[{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
    lp = r.choices[0].logprobs.content
    check(len(lp) == r.usage.completion_tokens and all(len(t.top_logprobs) == 3 for t in lp),
          "multi-turn chat with tools and top_logprobs")

    r = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": prompt}], max_tokens=30, temperature=0,
        stop=[want[3:6]] if len(want) > 6 else None)
    check(r.choices[0].finish_reason in ("stop", "length"), "stop strings accepted")

    for label, kwargs, err in [
        ("max_tokens out of range", dict(max_tokens=0), openai.BadRequestError),
        ("unknown model", dict(model="no-such-model"), openai.NotFoundError),
        ("temperature of the wrong type", dict(temperature="hot"), openai.BadRequestError),
    ]:
        call = dict(model=name, messages=[{"role": "user", "content": "x"}], max_tokens=2)
        call.update(kwargs)
        try:
            client.chat.completions.create(**call)
            check(False, f"{label} is refused")
        except err as e:
            check(isinstance(e.body, dict) and "message" in e.body, f"{label} -> {e.status_code}")
    print("all openai-client checks passed")


if __name__ == "__main__":
    main()
