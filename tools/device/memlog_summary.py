#!/usr/bin/env python3
"""Reads a `medqlora --memory-log FILE` log (cubecl's memory logger, basic level) and prints the
exact-size (persistent) pool at its high-water mark: the buffers by size, largest total first,
how many were free and in use then, and the pool's in-use / reserved totals.

Each new pool buffer logs the whole pool state; the state with the largest "Total bytes
reserved" is the peak. Usage: python3 tools/device/memlog_summary.py LOG [TOP]
"""
import re
import sys

UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def parse_bytes(text):
    value, unit = text.split()
    return float(value) * UNITS[unit]


def states(lines):
    """Yields (reserved, in_use, [(size, free, full)]) for each logged pool state."""
    slices, section, in_use = [], None, 0.0
    for line in lines:
        if line.startswith("# MemoryManagement"):
            slices, section, in_use = [], None, 0.0
        elif line.startswith("## "):
            section = line[3:].strip()
        m = re.match(r"\s+- Slices (.+?) =>\s+(\d+) free - (\d+) full - (\d+) total", line)
        if m and section == "Persistent":
            slices.append((parse_bytes(m.group(1)), int(m.group(2)), int(m.group(3))))
        m = re.match(r"\s+Bytes in use: (.+)", line)
        if m and section == "Summary":
            in_use = parse_bytes(m.group(1))
        m = re.match(r"\s+Total bytes reserved: (.+)", line)
        if m and section == "Summary":
            yield parse_bytes(m.group(1)), in_use, slices


def main():
    path, top = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25
    with open(path, errors="replace") as f:
        all_states = list(states(f))
    if not all_states:
        sys.exit(f"{path}: no pool state logged (was --memory-log given to a CUDA run?)")
    reserved, in_use, slices = max(all_states, key=lambda s: s[0])
    print(f"{len(all_states)} pool states logged; peak: reserved {reserved / 1e9:.2f} GB, in use {in_use / 1e9:.2f} GB")
    print(f"{'size':>12} {'free':>5} {'in use':>6} {'total GB':>9} {'free GB':>8}")
    rows = sorted(slices, key=lambda s: -s[0] * (s[1] + s[2]))
    for size, free, full in rows[:top]:
        print(f"{size / 1e6:>10.2f}MB {free:>5} {full:>6} {size * (free + full) / 1e9:>9.3f} {size * free / 1e9:>8.3f}")
    free_total = sum(size * free for size, free, _ in slices)
    print(f"free exact-size buffers at the peak: {free_total / 1e9:.2f} GB over {sum(1 for s in slices if s[1])} sizes")


if __name__ == "__main__":
    main()
