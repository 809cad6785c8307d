#!/usr/bin/env python3
"""Soak test of `moestream serve` on loopback, under bad traffic, bounded in time.

    python3 scripts/bench/serve_soak.py --moestream target/release/moestream \
        [--model DIR] [--seconds 150] [--clients 32] [--bad-sockets 50] [--max-tokens 32]

Two runs of --seconds each, each on a fresh server (--max-concurrent = --clients):

* `baseline`: --clients well-behaved streaming chat clients, nothing else;
* `bad`: the same clients, plus --bad-sockets sockets held open beside them (a quarter
  each: silent; sending one header byte every 2 s; headers then half a body; one request
  then idle on a kept-alive connection; each reopened as soon as the server closes it),
  plus one client sending stop strings at the limit (16 of 1024 bytes, which never occur:
  its answers must equal the plain ones) and, every tenth request, the reported attack
  (16 stop strings of 240 KB, which must get a 400).

Every answer of a well-behaved client is checked against the server's answer to the same
request alone (the tests prove those equal to `moestream generate`): a wrong or incomplete
one is counted. Reports per run: latency of the well-behaved requests (p50/p99, time to
first token), aggregate tok/s, errors, the server's RSS and open file descriptors every
5 s, the latency of GET /health, and how the bad sockets were closed. Standard library
only. Traffic goes to 127.0.0.1 only, and every loop stops at its deadline.
"""

import argparse
import asyncio
import json
import os
import re
import statistics

from serve_common import Server, machine, now

PROMPTS = [f"Story {i}: write about the number {i * 7}." for i in range(8)]


def chat_body(i, max_tokens, stop=None):
    body = {"messages": [{"role": "user", "content": PROMPTS[i]}], "max_tokens": max_tokens,
            "temperature": 0.8, "seed": i, "stream": True,
            "stream_options": {"include_usage": True}}
    if stop is not None:
        body["stop"] = stop
    return json.dumps(body).encode()


async def http(host, port, method, path, body=b"", read_stream=False):
    """One request on its own connection (Connection: close): (status, headers, body text,
    time to the first SSE chunk with generated text, or None)."""
    reader, writer = await asyncio.open_connection(host, port)
    t0 = now()
    try:
        head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        writer.write(head.encode() + body)
        await writer.drain()
        status_line = await reader.readline()
        status = int(status_line.split()[1]) if status_line else 0
        headers = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        first = None
        chunks = []
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if first is None and read_stream and FIRST_TEXT.search(data):
                first = now() - t0
            chunks.append(data)
        raw = b"".join(chunks)
        if headers.get("transfer-encoding") == "chunked":
            raw = dechunk(raw)
        return status, headers, raw.decode(errors="replace"), first
    finally:
        writer.close()


# A chunk whose delta carries text (the chat stream's opening chunk has empty content).
FIRST_TEXT = re.compile(rb'"content":"[^"]')


def dechunk(raw):
    out = bytearray()
    while raw:
        size, _, rest = raw.partition(b"\r\n")
        n = int(size.strip() or b"0", 16)
        if n == 0:
            break
        out += rest[:n]
        raw = rest[n + 2:]
    return bytes(out)


def stream_text(body):
    """(text, finish_reason, completion tokens) of an SSE chat stream; finish None when it
    did not end properly."""
    text, finish, done, tokens = "", None, False, 0
    for line in body.splitlines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            done = True
            continue
        v = json.loads(data)
        if "error" in v:
            return text, None, tokens
        if v.get("usage"):
            tokens = v["usage"]["completion_tokens"]
        for c in v.get("choices", []):
            text += c.get("delta", {}).get("content") or ""
            finish = c.get("finish_reason") or finish
    return text, (finish if done else None), tokens


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Bad:
    """The sockets that hold a connection without using it, reopened when closed."""

    KINDS = ["silent", "slow_headers", "half_body", "idle_keepalive"]

    def __init__(self, host, port, count, deadline):
        self.host, self.port, self.count, self.deadline = host, port, count, deadline
        self.closed = {k: 0 for k in self.KINDS}
        self.held_s = {k: [] for k in self.KINDS}
        self.answers = {}
        self.refused = 0

    async def one(self, kind):
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            self.refused += 1
            await asyncio.sleep(0.5)
            return
        t0 = now()
        try:
            if kind == "slow_headers":
                async def drip():
                    try:
                        for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10000:
                            if now() > self.deadline:
                                return
                            writer.write(bytes([b]))
                            await writer.drain()
                            await asyncio.sleep(2)
                    except (ConnectionError, OSError):
                        return
                dripping = asyncio.ensure_future(drip())
            elif kind == "half_body":
                writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n"
                             b'{"prompt": "')
            elif kind == "idle_keepalive":
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            # Hold it until the server closes it (or the run ends).
            got = b""
            while now() < self.deadline:
                try:
                    data = await asyncio.wait_for(reader.read(4096),
                                                  max(0.1, self.deadline - now()))
                except asyncio.TimeoutError:
                    break
                if not data:
                    self.closed[kind] += 1
                    self.held_s[kind].append(now() - t0)
                    break
                got += data
            for status in (b"HTTP/1.1 200", b"HTTP/1.1 408", b"HTTP/1.1 503"):
                if status in got:
                    key = f"{kind}:{status.decode()[9:]}"
                    self.answers[key] = self.answers.get(key, 0) + 1
            if kind == "slow_headers":
                dripping.cancel()
        except (ConnectionError, OSError):
            self.closed[kind] += 1
            self.held_s[kind].append(now() - t0)
        finally:
            writer.close()

    async def holder(self, kind):
        while now() < self.deadline:
            await self.one(kind)

    def tasks(self):
        return [self.holder(self.KINDS[i % len(self.KINDS)]) for i in range(self.count)]

    def report(self):
        return {"closed_by_server": self.closed,
                "median_held_s": {k: round(statistics.median(v), 1) if v else None
                                  for k, v in self.held_s.items()},
                "answers": self.answers, "connect_refused": self.refused}


async def run(server, a, bad_traffic):
    host, port = server.addr.rsplit(":", 1)
    port = int(port)
    # Reference answers, one request at a time (also warms the server).
    expected = []
    for i in range(len(PROMPTS)):
        status, _, body, _ = await http(host, port, "POST", "/v1/chat/completions",
                                        chat_body(i, a.max_tokens), True)
        text, finish, _ = stream_text(body)
        assert status == 200 and finish, body
        expected.append(text)
    deadline = now() + a.seconds
    st = {"completed": 0, "wrong": 0, "incomplete": 0, "errors": {}, "tokens": 0}
    latency, ttft = [], []

    async def worker(w):
        k = w
        while now() < deadline:
            i = k % len(PROMPTS)
            k += a.clients
            t0 = now()
            try:
                status, _, body, first = await http(host, port, "POST", "/v1/chat/completions",
                                                    chat_body(i, a.max_tokens), True)
            except (ConnectionError, OSError) as e:
                st["errors"][type(e).__name__] = st["errors"].get(type(e).__name__, 0) + 1
                await asyncio.sleep(0.05)
                continue
            if status != 200:
                st["errors"][str(status)] = st["errors"].get(str(status), 0) + 1
                await asyncio.sleep(0.05)
                continue
            text, finish, tokens = stream_text(body)
            if finish is None:
                st["incomplete"] += 1
            elif text != expected[i]:
                st["wrong"] += 1
            else:
                st["completed"] += 1
                latency.append(now() - t0)
                if first is not None:
                    ttft.append(first)
                st["tokens"] += tokens

    stopper = {"accepted_same_answer": 0, "accepted_wrong": 0, "huge_rejected_400": 0,
               "other": {}}

    async def stop_client():
        n = 0
        maximal = [("~" * 1023) + format(j, "x") for j in range(16)]
        huge = [("~" * (240 << 10)) + format(j, "x") for j in range(16)]
        while now() < deadline:
            n += 1
            i = n % len(PROMPTS)
            stop = huge if n % 10 == 0 else maximal
            try:
                status, _, body, _ = await http(host, port, "POST", "/v1/chat/completions",
                                                chat_body(i, a.max_tokens, stop), True)
            except (ConnectionError, OSError) as e:
                stopper["other"][type(e).__name__] = stopper["other"].get(type(e).__name__, 0) + 1
                continue
            if stop is huge and status == 400 and "1024" in body:
                stopper["huge_rejected_400"] += 1
            elif stop is maximal and status == 200:
                text, finish, _ = stream_text(body)
                ok = finish is not None and text == expected[i]
                stopper["accepted_same_answer" if ok else "accepted_wrong"] += 1
            else:
                stopper["other"][str(status)] = stopper["other"].get(str(status), 0) + 1

    samples = []

    async def sampler():
        while now() < deadline:
            t0 = now()
            try:
                status, _, _, _ = await http(host, port, "GET", "/health")
            except (ConnectionError, OSError):
                status = 0
            health_ms = round((now() - t0) * 1000, 1)
            fds = len(os.listdir(f"/proc/{server.proc.pid}/fd"))
            samples.append({"t": round(a.seconds - (deadline - now())), "rss_mib":
                            round(server.rss_mib(), 1), "fds": fds, "health_ms": health_ms,
                            "health_status": status})
            await asyncio.sleep(max(0.0, min(5.0, deadline - now())))

    bad = Bad(host, port, a.bad_sockets, deadline) if bad_traffic else None
    t0 = now()
    extra = (bad.tasks() + [stop_client()]) if bad else []
    await asyncio.gather(sampler(), *extra, *(worker(w) for w in range(a.clients)))
    wall = now() - t0
    out = {
        **st,
        "wall_s": round(wall, 1),
        "tok_s": round(st["tokens"] / wall, 1),
        "latency_p50_ms": round(pct(latency, 50) * 1000, 1),
        "latency_p99_ms": round(pct(latency, 99) * 1000, 1),
        "ttft_p50_ms": round(pct(ttft, 50) * 1000, 1),
        "ttft_p99_ms": round(pct(ttft, 99) * 1000, 1),
        "rss_mib": [s["rss_mib"] for s in samples],
        "fds": [s["fds"] for s in samples],
        "health_ms_max": max(s["health_ms"] for s in samples),
        "health_not_200": sum(s["health_status"] != 200 for s in samples),
    }
    if bad:
        out["bad_sockets"] = bad.report()
        out["stop_client"] = stopper
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moestream", required=True)
    ap.add_argument("--model")
    ap.add_argument("--seconds", type=float, default=150)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--bad-sockets", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--runs", default="baseline,bad")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    print(f"# {machine()}; {a.clients} streaming clients for {a.seconds:.0f} s, "
          f"{a.max_tokens} tokens per request; bad run: {a.bad_sockets} slow/idle sockets "
          f"and one stop-string client", flush=True)
    results = {}
    for name in a.runs.split(","):
        args = ["--max-concurrent", str(a.clients), "--max-queue", "256"]
        if a.model:
            args += ["--model", a.model]
        server = Server(a.moestream, args)
        try:
            results[name] = asyncio.run(run(server, a, name == "bad"))
        finally:
            server.stop()
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    print("\n| run | completed | wrong | incomplete | errors | p50 / p99 latency (ms) | "
          "p50 / p99 TTFT (ms) | tok/s | RSS min-max (MiB) | fds max | /health max (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['completed']} | {r['wrong']} | {r['incomplete']} | "
              f"{r['errors'] or 0} | {r['latency_p50_ms']} / {r['latency_p99_ms']} | "
              f"{r['ttft_p50_ms']} / {r['ttft_p99_ms']} | {r['tok_s']} | "
              f"{min(r['rss_mib'])}-{max(r['rss_mib'])} | {max(r['fds'])} | "
              f"{r['health_ms_max']} |")


if __name__ == "__main__":
    main()
