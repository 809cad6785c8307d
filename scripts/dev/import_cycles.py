#!/usr/bin/env python3
"""Lists import cycles between the modules of each crate under crates/ (issue: "no two
modules import each other, directly or around a loop").

A module is a source file; `use crate::a::b::...`, `use super::...`, `crate::a::b::` paths in
code, and `super::` paths are resolved to the deepest existing module file. A module's
imports of its own submodules (a parent naming its children) are not counted: that is the
tree itself. Prints each strongly connected component of two or more modules; exit status 1
if there is any.

    python3 scripts/dev/import_cycles.py [crates/engine ...]
"""
import os
import re
import sys


def modules(src):
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            p = os.path.join(root, f)
            rel = os.path.relpath(p, src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            mods[tuple(rel)] = p
    return mods


PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def resolve(mods, here, is_dir_mod, kind, parts):
    if kind == "crate":
        base = []
    else:
        # `super` of a module is its parent, for a file and a directory module alike.
        base = list(here[:-1])
        while parts and parts[0] == "super":
            base = base[:-1]
            parts = parts[1:]
    path = base + parts
    for n in range(len(path), -1, -1):
        if tuple(path[:n]) in mods:
            return tuple(path[:n])
    return None


def edges(mods):
    g = {m: set() for m in mods}
    for m, p in mods.items():
        is_dir = os.path.basename(p) in ("mod.rs", "lib.rs", "main.rs")
        text = open(p, encoding="utf-8").read()
        text = re.sub(r"//[^\n]*", "", text)
        text = re.sub(r"#\[cfg\(test\)\]\s*mod tests\s*\{.*", "", text, flags=re.S)
        for kind, rest in PATH.findall(text):
            parts = [x for x in rest.split("::") if x]
            target = resolve(mods, m, is_dir, kind, parts)
            if target is None or target == m or target[: len(m)] == m:
                continue  # itself or its own submodule
            g[m].add(target)
    return g


def sccs(g):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in g:
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def main():
    crates = sys.argv[1:] or sorted(os.path.join("crates", c) for c in os.listdir("crates"))
    bad = 0
    for c in crates:
        mods = modules(os.path.join(c, "src"))
        for comp in sccs(edges(mods)):
            bad += 1
            names = sorted("::".join(m) or "(root)" for m in comp)
            print(f"{c}: cycle among {', '.join(names)}")
    sys.exit(1 if bad else 0)


main()
