#!/usr/bin/env python3
"""Module cycles of one crate: which top-level modules use which, and the groups that
depend on themselves (strongly connected components of that graph).

    python3 scripts/module-cycles.py [SRC_DIR]          # default: gateway/src
    python3 scripts/module-cycles.py --edges [SRC_DIR]  # also every edge, with the file
    python3 scripts/module-cycles.py --check [SRC_DIR]  # exit 1 unless the cycles are
                                                        # exactly INTENDED (CI runs this
                                                        # for gateway/src and the runtime's
                                                        # crates/plugin-host/src)

A top-level module is `SRC_DIR/NAME.rs` plus everything under `SRC_DIR/NAME/`. An edge
`a -> b` is a `crate::b` path (in a `use`, a `use crate::{b::..}` group, or in code) or a
`super::`/`super::super::` path that resolves to `b`, in a file of `a`, outside comments,
strings and `#[cfg(test)]` items (tests may use anything). `crate::NAME` for an item of
the crate root (lib.rs) is an edge to `(lib)`; for a name lib.rs re-exports from one of its
modules (`pub(crate) use self::m::NAME`) it is an edge to that module, and for one it
re-exports from another crate (`pub use other::x`) no edge. A re-export of another crate *inside* a module (as
`plugin` re-exports the runtime crate) still counts: the reader of the tree sees
`crate::plugin::X` either way.

Hand-written (not `cargo modules`, which needs a nightly-built rust-analyzer; not a
library: the standard library's dict/list suffice for Tarjan's algorithm on ~30 nodes).
Without --check the exit status is 0; the output is for people (docs/architecture.md
quotes it).
"""

import os
import re
import sys


# The cycles that docs/architecture.md ("Deliberate cycles") names as intended, by source
# directory, each the exact set of modules of one strongly connected component. Change both
# together.
INTENDED = {
    "gateway/src": [{"body", "error", "upstream"}],
    # wasmtime's bindgen! names the resource types host.rs and crypto.rs define.
    "crates/plugin-host/src": [{"bindings", "crypto", "host"}],
}


def strip(src):
    """Source with comments, string and char literals blanked (newlines kept)."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * src.count("\n", i, j))
            i = j
        elif (m := re.match(r'b?r(#*)"', src[i:i + 12])) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            end = '"' + m.group(1)
            j = src.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * src.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append('""' + "\n" * src.count("\n", i, j))
            i = j + 1
        elif c == "'" and (m := re.match(r"'(\\.|\\u\{[0-9a-fA-F]+\}|[^\\'])'", src[i:i + 12])):
            out.append("' '")
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def drop_test_items(src):
    """Removes each item that follows `#[cfg(test)]` (to its matching `}` or `;`)."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]", src):
        if m.start() < i:
            continue
        out.append(src[i:m.start()])
        j, depth = m.end(), 0
        while j < len(src):
            if src[j] == "{":
                depth += 1
            elif src[j] == "}":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            elif src[j] == ";" and depth == 0:
                j += 1
                break
            j += 1
        i = j
    out.append(src[i:])
    return "".join(out)


def group_heads(body):
    """First path segment of each top-level entry of a `{...}` use group."""
    heads, depth, cur = [], 0, ""
    for c in body:
        if c in "{" and depth == 0:
            depth += 1
            cur += c
        elif c == "{":
            depth += 1
            cur += c
        elif c == "}":
            depth -= 1
            cur += c
        elif c == "," and depth == 0:
            heads.append(cur)
            cur = ""
        else:
            cur += c
    heads.append(cur)
    out = []
    for h in heads:
        m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", h)
        if m:
            out.append((m.group(1), h[m.end():].lstrip().startswith("::")))
    return out


def refs(src, here):
    """(path of module segments) each `crate::`/`super::` path in src points at.

    `here` is the module path of the file (e.g. ["config", "server"]); inline `mod x {`
    blocks extend it while open.
    """
    found = []
    # inline modules: track (depth-at-open) stack
    stack, depth = [], 0
    tokens = re.finditer(
        r"(?<![A-Za-z0-9_$])(crate|(?:super::)+)(::)?\s*(\{|[A-Za-z_][A-Za-z0-9_]*)|"
        r"\bmod\s+([A-Za-z_][A-Za-z0-9_]*)\s*\{|[{}]",
        src,
    )
    for t in tokens:
        s = t.group(0)
        if s == "{":
            depth += 1
            continue
        if s == "}":
            depth -= 1
            if stack and stack[-1][0] == depth:
                stack.pop()
            continue
        if t.group(4):
            stack.append((depth, t.group(4)))
            depth += 1
            continue
        cur = here + [name for _, name in stack]
        root = t.group(1)
        if root == "crate":
            if not t.group(2):
                continue
            base = []
        else:
            ups = root.count("super")
            base = cur[: len(cur) - ups] if ups <= len(cur) else []
        seg = t.group(3)
        if seg == "{":
            # find the group body
            j, d = t.end(), 1
            while j < len(src) and d:
                d += {"{": 1, "}": -1}.get(src[j], 0)
                j += 1
            for head, _ in group_heads(src[t.end(): j - 1]):
                if head not in ("self",):
                    found.append(base + [head])
        else:
            found.append(base + [seg])
    return found


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    show_edges = "--edges" in sys.argv
    check = "--check" in sys.argv
    src_dir = args[0] if args else "gateway/src"
    lib = open(os.path.join(src_dir, "lib.rs")).read()
    modules = re.findall(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+([a-z_0-9]+)\s*;", strip(lib), re.M)
    # Names lib.rs re-exports: from another crate (no edge), or from one of its modules
    # (`pub(crate) use self::log_stream::LOG_TARGET;`: `crate::LOG_TARGET` is that module's).
    reexports = {}
    for path, name in re.findall(
        r"^\s*(?:pub(?:\([a-z]+\))?\s+)?use\s+((?:self::|crate::)?[\w:]+)::(\w+)\s*;", strip(lib), re.M
    ):
        head = re.sub(r"^(self|crate)::", "", path).split("::")[0]
        reexports[name] = head if head in modules else None

    edges = {m: {} for m in modules}
    edges["(lib)"] = {}
    for m in modules:
        files = []
        if os.path.exists(os.path.join(src_dir, m + ".rs")):
            files.append((os.path.join(src_dir, m + ".rs"), [m]))
        for dirpath, _, names in os.walk(os.path.join(src_dir, m)):
            for name in names:
                if name.endswith(".rs"):
                    path = os.path.join(dirpath, name)
                    rel = os.path.relpath(path, src_dir)[:-3].split(os.sep)
                    if rel[-1] == "mod":
                        rel = rel[:-1]
                    files.append((path, rel))
        for path, here in files:
            text = drop_test_items(strip(open(path).read()))
            for target in refs(text, here):
                if not target:
                    continue
                head = target[0]
                if head in modules:
                    dst = head
                elif head in reexports:
                    dst = reexports[head]
                    if dst is None:
                        continue
                else:
                    dst = "(lib)"
                if dst != m:
                    edges[m].setdefault(dst, set()).add(os.path.relpath(path, src_dir))
    # lib.rs itself (which names its modules without `crate::` too: `cluster::bootstrap`)
    lib_code = drop_test_items(strip(lib))
    for target in refs(lib_code, []):
        if target and target[0] in modules:
            edges["(lib)"].setdefault(target[0], set()).add("lib.rs")
    for name in re.findall(r"(?<![A-Za-z0-9_:$])([a-z_][a-z0-9_]*)::", lib_code):
        if name in modules:
            edges["(lib)"].setdefault(name, set()).add("lib.rs")

    sccs = tarjan({k: set(v) for k, v in edges.items()})
    cyclic = [c for c in sccs if len(c) > 1]
    print(f"{src_dir}: {len(modules)} modules (+ the crate root, `(lib)`)")
    for c in sorted(cyclic, key=len, reverse=True):
        inner = [x for x in c if x != "(lib)"]
        print(f"cycle of {len(inner)} modules" + (" + (lib)" if "(lib)" in c else "") + ": " + " ".join(sorted(c)))
        for a in sorted(c):
            for b in sorted(edges[a]):
                if b in c:
                    print(f"  {a} -> {b}   ({', '.join(sorted(edges[a][b]))})")
    if not cyclic:
        print("no cycles")
    if check:
        intended = INTENDED.get(os.path.normpath(src_dir), [])
        unexpected = [c for c in cyclic if set(c) not in intended]
        gone = [i for i in intended if i not in [set(c) for c in cyclic]]
        for c in unexpected:
            print(f"error: a module cycle docs/architecture.md does not name: {' '.join(sorted(c))}"
                  " (cut the edge that closes it, or name it there and in INTENDED here)")
        for i in gone:
            print(f"note: the intended cycle {' '.join(sorted(i))} is gone: update INTENDED and"
                  " docs/architecture.md")
        if unexpected or gone:
            sys.exit(1)
    if show_edges:
        print("all edges:")
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f"  {a} -> {b}   ({', '.join(sorted(edges[a][b]))})")


def tarjan(graph):
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    main()
