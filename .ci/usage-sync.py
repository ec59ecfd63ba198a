#!/usr/bin/env python3
"""Keeps the docs' usage blocks true: every fenced block in README.md and
docs/*.md that starts with "Usage:" and names "tentacle CMD" is compared
with (or, with --write, replaced by) the text "tentacle help CMD" prints,
up to its "Flags:" list. Exit 1 when a block differs (CI), listing them."""
import re, subprocess, sys, glob, os

binary, write = sys.argv[1], "--write" in sys.argv
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
cache, bad = {}, []

def helptext(words):
    key = " ".join(words)
    if key not in cache:
        out = subprocess.run([binary, "help", *words] if words[0] != "trust" and words[0] != "service" and words[0] != "agents"
                             else [binary, *words, "-h"], capture_output=True, text=True)
        text = out.stdout + out.stderr
        cache[key] = text.split("\nFlags:")[0].rstrip("\n") + "\n"
    return cache[key]

for path in [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs", "*.md"))):
    src = open(path).read()
    def fix(m):
        body = m.group(2)
        cmd = re.search(r"^  tentacle ([a-z-]+)(?: (add|remove|list|tag|untag|status|install|uninstall))?", body, re.M)
        if not body.startswith("Usage:\n") or not cmd:
            return m.group(0)
        words = [w for w in cmd.groups() if w]
        want = helptext(words)
        if body != want:
            bad.append(f"{os.path.relpath(path, root)}: usage of tentacle {' '.join(words)}")
            if write:
                return m.group(1) + want + m.group(3)
        return m.group(0)
    new = re.sub(r"(```\n)(Usage:\n.*?)(```)", fix, src, flags=re.S)
    if write and new != src:
        open(path, "w").write(new)

for b in bad:
    print(("rewrote " if write else "differs from the binary's help: ") + b)
sys.exit(1 if bad and not write else 0)
