"""Check a `moe-oracle demo` log (CI): the table is there, with one numeric row per demo format.

    python3 ci/check_demo_output.py demo.log
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

FORMATS = ("fp8_block", "int4_w4a16", "int8_w8a8", "mxfp8", "mxfp4_w4a16")
ROW = r"^{name} +\| (?P<backend>[a-z+]+) +\| (?P<err>[0-9.]+)% +\| (?P<top1>[0-9.]+)% +\| [0-9.]+ +\| [0-9.]+ *$"


def main(path: str) -> int:
    text = Path(path).read_text()
    problems = []
    if not re.search(r"^format +\| backend +\| logits rel err", text, re.M):
        problems.append("no table header")
    if not re.search(r"^bf16 \(dense\) +\| transformers", text, re.M):
        problems.append("no bf16 baseline row")
    for name in FORMATS:
        m = re.search(ROW.format(name=name), text, re.M)
        if m is None:
            problems.append(f"no numeric row for {name}")
        elif float(m["err"]) >= 30.0:
            problems.append(f"{name}: logits error {m['err']}% is not a working quantized model")
    if not re.search(r"<- this machine", text):
        problems.append("no backend choice for this machine")
    for p in problems:
        print(f"demo output: {p}", file=sys.stderr)
    print("demo output: table checked" if not problems else "demo output: FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
