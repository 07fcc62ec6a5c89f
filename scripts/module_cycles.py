#!/usr/bin/env python3
"""Import cycles between the top-level modules of each crate, and the size limits.

A module's dependencies are the other top-level modules of its crate that it names
(`crate::x`, `super::x` from a child, or `x::` after `use crate::{x, ...}`), outside its
`#[cfg(test)]` part. Prints every cycle (strongly connected component of more than one
module), every source file over 600 lines and every function over 80 lines outside tests,
unless the file's module doc says why ("Past the ~600-line guideline" / "over 80 lines").
Exit status 1 if any cycle is found (sizes are reported, not enforced, until the redesign
issue finishes).
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def strip_tests(text):
    i = text.find("#[cfg(test)]")
    return text if i < 0 else text[:i]


def modules(src):
    mods = {}
    for name in os.listdir(src):
        p = os.path.join(src, name)
        if name.endswith(".rs") and name not in ("lib.rs", "main.rs"):
            mods[name[:-3]] = [p]
        elif os.path.isdir(p):
            files = []
            for dp, _, fs in os.walk(p):
                files += [os.path.join(dp, f) for f in fs if f.endswith(".rs")]
            mods[name] = files
    return mods


def deps(files, names, me):
    out = set()
    for f in files:
        if os.path.basename(f) == "tests.rs":
            continue  # a test-only module (`#[cfg(test)] mod tests;`)
        text = strip_tests(open(f, encoding="utf-8").read())
        text = re.sub(r"//[^\n]*", "", text)
        for m in re.finditer(r"crate::(\w+)", text):
            out.add(m.group(1))
        for m in re.finditer(r"use crate::\{([^}]*)\}", text):
            for part in re.split(r"[,\s]+", m.group(1)):
                out.add(part.split("::")[0])
    return {d for d in out if d in names and d != me}


def sccs(graph):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def long_functions(path):
    lines = strip_tests(open(path, encoding="utf-8").read()).split("\n")
    found = []
    for i, l in enumerate(lines):
        m = re.match(r"^(\s*)(pub(\([^)]*\))? )?(async )?fn (\w+)", l)
        if not m:
            continue
        indent = m.group(1)
        for j in range(i + 1, len(lines)):
            if lines[j].startswith(indent + "}") and len(lines[j].strip()) <= 2:
                if j - i + 1 > 80:
                    found.append((m.group(5), i + 1, j - i + 1))
                break
    return found


def main():
    cycles = 0
    for crate in sorted(os.listdir(os.path.join(ROOT, "crates"))):
        src = os.path.join(ROOT, "crates", crate, "src")
        if not os.path.isdir(src):
            continue
        mods = modules(src)
        graph = {m: deps(fs, mods, m) for m, fs in mods.items()}
        for comp in sccs(graph):
            cycles += 1
            edges = [f"{a}->{b}" for a in comp for b in sorted(graph[a]) if b in comp]
            print(f"cycle in {crate}: {', '.join(comp)}  ({'; '.join(edges)})")
        for dp, _, fs in os.walk(src):
            for f in sorted(fs):
                if not f.endswith(".rs"):
                    continue
                p = os.path.join(dp, f)
                text = open(p, encoding="utf-8").read()
                explained = "Past the ~600-line guideline" in text or "over 80 lines" in text
                n = len(strip_tests(text).split("\n"))
                rel = os.path.relpath(p, ROOT)
                if n > 600 and not explained:
                    print(f"long file: {rel} has {n} lines outside tests")
                for name, line, length in long_functions(p):
                    if not explained:
                        print(f"long function: {rel}:{line} {name} is {length} lines")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
