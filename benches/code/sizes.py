#!/usr/bin/env python3
"""Function and file sizes of a Rust tree, as issue 21 quotes them: `fn` items measured by
brace matching (tests included), files by lines. Usage: python3 benches/code/sizes.py src"""
import os, re, sys, statistics
root = sys.argv[1]
fns, files = [], []
fn_re = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+\w+')
for d, _, names in os.walk(root):
    for n in names:
        if not n.endswith('.rs'): continue
        p = os.path.join(d, n)
        lines = open(p, encoding='utf-8').read().split('\n')
        files.append((len(lines), p))
        i = 0
        while i < len(lines):
            if fn_re.match(lines[i]):
                depth, started, j = 0, False, i
                while j < len(lines):
                    s = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j])
                    s = re.sub(r"'(\\.|[^'\\])'", "''", s)
                    s = s.split('//')[0]
                    if not started and ';' in s and '{' not in s:
                        break
                    depth += s.count('{') - s.count('}')
                    if '{' in s: started = True
                    if started and depth <= 0: break
                    j += 1
                if started:
                    fns.append(j - i + 1)
                i = j + 1 if started else i + 1
            else:
                i += 1
fns.sort(); files.sort()
q = lambda xs, p: xs[min(len(xs)-1, int(p*len(xs)))]
print(f"fns {len(fns)}: median {statistics.median(fns)}, p90 {q(fns,0.9)}, max {fns[-1]}")
fl = [f for f,_ in files]
print(f"files {len(fl)}: median {statistics.median(fl)}, p90 {q(fl,0.9)}, max {fl[-1]}, over 700: {[p for f,p in files if f>700]}")
print(f"lines {sum(fl)}")
