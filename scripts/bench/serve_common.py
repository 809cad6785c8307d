"""Starting and stopping `moestream serve` for the benchmark scripts."""

import os
import subprocess
import threading
import time


class Server:
    """`moestream serve --port 0 ...` in the background; knows its address and RSS."""

    def __init__(self, binary, extra_args):
        self.proc = subprocess.Popen([binary, "serve", "--port", "0", *extra_args],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.addr = None
        for line in self.proc.stderr:
            if "on http://" in line:
                self.addr = line.split("on http://")[1].split()[0]
                break
        if self.addr is None:
            raise RuntimeError("the server did not start")
        self.base_url = f"http://{self.addr}/v1"
        # Keep reading the server's log, so that a full pipe never blocks it.
        self.log_tail = []

        def drain():
            for line in self.proc.stderr:
                self.log_tail = (self.log_tail + [line])[-50:]

        threading.Thread(target=drain, daemon=True).start()

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def now():
    return time.perf_counter()


def machine():
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start"
