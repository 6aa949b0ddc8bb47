"""Run every benchmark (each in its own process) and write bench/results.md + results.json."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from common import TABLE_HEAD, format_row

HERE = Path(__file__).parent
BENCHES = ["input_pipeline.py", "train_step.py", "tricks_overhead.py", "recordio.py", "image_folder.py",
           "parallel_table.py"]


def main() -> int:
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.json"):
        old.unlink()
    failed = []
    for name in BENCHES:
        if not (HERE / name).exists():
            continue
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        # faulthandler: a crash inside MXNet prints the Python stack that led to it
        proc = subprocess.run([sys.executable, "-X", "faulthandler", name], cwd=HERE)
        if proc.returncode:
            # input_pipeline.py segfaulted in 1 of ~5 runs on a loaded 2-core machine, in MXNet,
            # not reproducibly; one more try keeps its rows, and the retry is printed
            print(f"   {name} exited with {proc.returncode}; running it once more", flush=True)
            proc = subprocess.run([sys.executable, "-X", "faulthandler", name], cwd=HERE)
        print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
        if proc.returncode:
            failed.append(name)
    rows = []
    for name in BENCHES:
        f = out / (Path(name).stem + ".json")
        if f.exists():
            rows += json.loads(f.read_text())
    lines = ["# Benchmark results", "",
             "Measured side by side in one run on this machine; ratios matter, absolute numbers do not.",
             "Regenerate with `make bench`.", ""] + TABLE_HEAD + [format_row(r) for r in rows]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    (HERE / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {HERE / 'results.md'} ({len(rows)} rows)")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
