"""Corpus-scale benchmarks (issue #12): one entry point, three parts.

    python bench/scale.py train     [args]   # bench/scale_train.py: synthetic 1x/10x/40x EMODB feature stores,
                                             # in-memory vs streaming folds: utterances/s and peak RSS
    python bench/scale.py extract   [args]   # bench/scale_extract.py: LOGMEL over 40x EMODB audio, plain loop
                                             # and Ray Data with 1 and 2 workers: steady-state audio-s/s
    python bench/scale.py pooled    [args]   # bench/scale_pooled.py: LOSO over EMODB+RAVDESS on shared classes
                                             # against each corpus's own LOSO on the same classes
    python bench/scale.py all                # the three, one after another, with their default arguments

Each part prints its figures and writes its own JSON under bench/results/ (scale_train.json,
scale_extract.json, scale_pooled.json); `--help` after a part name shows that part's options.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

PARTS = {"train": "scale_train.py", "extract": "scale_extract.py", "pooled": "scale_pooled.py"}


def run_part(part: str, args: list[str]) -> None:
    script = Path(__file__).with_name(PARTS[part])
    if not script.is_file():
        raise SystemExit(f"bench/scale.py {part}: {script} is missing")
    sys.argv = [str(script), *args]
    if str(script.parent) not in sys.path:
        sys.path.insert(0, str(script.parent))  # the parts import bench/common.py as scripts do
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:  # a part's sys.exit(main()): stop only on failure
        if exc.code not in (None, 0):
            raise


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    part, rest = argv[0], argv[1:]
    if part == "all":
        if rest:
            print("bench/scale.py all takes no options; give them to one part at a time", file=sys.stderr)
            return 2
        for name in PARTS:
            run_part(name, [])
        return 0
    if part not in PARTS:
        print(f"bench/scale.py: unknown part {part!r}; expected one of {', '.join([*PARTS, 'all'])}", file=sys.stderr)
        return 2
    run_part(part, rest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
