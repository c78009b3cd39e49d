#!/usr/bin/env python3
"""Import cycles between sibling modules of each crate (the project rule: no import cycles).

For each crate's src/, every .rs file is a module (`a/b.rs` and `a/b/mod.rs` are `a::b`); the
crate-internal paths it names outside `#[cfg(test)]` modules and comments (`use crate::..`,
`use super::..`, inline `crate::x::y`) are its dependencies, each lifted to the two children
of the common parent (a file that uses `crate::a::b::c` from `crate::a::d` depends on `b`, as
`d`). A cycle is a strongly connected set of such siblings; each is printed with the paths that
make it. Exits 1 if there is one. Usage: import_cycles.py [WORKSPACE_DIR]."""
import os
import re
import sys


def module_path(src, path):
    parts = os.path.relpath(path, src)[:-3].split(os.sep)
    return tuple(parts[:-1] if parts[-1] in ("mod", "lib", "main") else parts)


def without_tests_and_comments(text):
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", text)
        if not m:
            break
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        text = text[: m.start()] + text[j:]
    return re.sub(r"//[^\n]*", "", text)


def expand(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]."""
    tree = re.sub(r"\s+", "", tree)
    m = re.match(r"^(.*?)::\{(.*)\}$", tree)
    if not m:
        return [re.sub(r"as\w+$", "", tree)]
    prefix, body = m.groups()
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    if cur:
        parts.append(cur)
    out = []
    for p in parts:
        out += [prefix] if p == "self" else [prefix + "::" + q for q in expand(p)]
    return out


def named_paths(text):
    paths = [p for m in re.finditer(r"\buse\s+([^;]+);", text) for p in expand(m.group(1))]
    return paths + re.findall(r"\b((?:crate|super)(?:::\w+)+)", text)


def cycles_of(src):
    files = {}
    for d, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                files[os.path.join(d, n)] = module_path(src, os.path.join(d, n))
    modules = set(files.values())
    edges = {}
    for path, here in files.items():
        with open(path, encoding="utf-8") as f:
            text = without_tests_and_comments(f.read())
        for used in named_paths(text):
            segs = used.split("::")
            if segs[0] == "crate":
                target = segs[1:]
            else:
                target = list(here)
                while segs and segs[0] == "super":
                    target, segs = target[:-1], segs[1:]
                target += segs
            while target and tuple(target) not in modules:
                target = target[:-1]
            k = 0
            while k < min(len(here), len(target)) and here[k] == target[k]:
                k += 1
            if k == len(here) or k == len(target):
                continue  # itself, an ancestor or a descendant
            a, b = here[: k + 1], tuple(target[: k + 1])
            edges.setdefault(a, {}).setdefault(b, set()).add((path, used))
    # Tarjan's strongly connected components.
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
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
                found.append(sorted(comp))

    for v in sorted(set(edges) | {w for e in edges.values() for w in e}):
        if v not in index:
            visit(v)
    return files, edges, found


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    total = 0
    for crate in sorted(os.listdir(root)):
        src = os.path.join(root, crate, "src")
        if not os.path.isdir(src):
            continue
        files, edges, found = cycles_of(src)
        n_edges = sum(len(e) for e in edges.values())
        print(f"{crate}: {len(files)} files, {n_edges} sibling edges, {len(found)} cycles")
        for comp in found:
            print("  cycle:", " <-> ".join("::".join(m) for m in comp))
            for v in comp:
                for w in sorted(edges.get(v, {})):
                    if w in comp:
                        for path, used in sorted(edges[v][w])[:3]:
                            rel = os.path.relpath(path, root)
                            print(f"    {'::'.join(v)} -> {'::'.join(w)}: {rel}: {used}")
        total += len(found)
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
