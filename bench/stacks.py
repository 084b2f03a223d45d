"""Summarise py-spy collapsed stacks: where the workers' samples went.

    python -m bench.stacks DIR [N]

Prints, per thread kind, the functions with the most samples on top (self) and
anywhere on the stack (total).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path


def summarise(directory: Path, top: int = 25) -> str:
    self_time, total_time, threads = Counter(), Counter(), Counter()
    samples = 0
    for path in sorted(directory.glob("*.txt")):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue  # py-spy stopped mid-line when the worker was killed
            n = int(count)
            frames = stack.split(";")
            thread = re.sub(r"\d+", "#", frames[0])
            threads[thread] += n
            samples += n
            names = [re.sub(r" \(.*?:\d+\)$", "", f) + " " + (re.search(r"\((.*?)(:\d+)?\)$", f) or [None, ""])[1].split("/")[-1]
                     for f in frames[1:]]
            if names:
                self_time[names[-1]] += n
            for name in set(names):
                total_time[name] += n
    out = [f"{samples} samples", "", "by thread:"]
    out += [f"  {n / samples:6.1%}  {t}" for t, n in threads.most_common(8)]
    out += ["", "self:"] + [f"  {n / samples:6.1%}  {f}" for f, n in self_time.most_common(top)]
    out += ["", "total:"] + [f"  {n / samples:6.1%}  {f}" for f, n in total_time.most_common(top)]
    return "\n".join(out)


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25))
