"""Set up the reader matrix's cache and say which readers are ready:
`PYTHONPATH=tests python3 -m readers` (standard library only, so .ci/run can call it before the
virtualenv exists). Exits 1 when a reader could not be set up."""

from __future__ import annotations

import sys

from readers import READERS, cache_dir, matrix


def main() -> int:
    m = matrix()
    ready = [r for r in READERS if r in m.readers]
    print(f"readers ready in {cache_dir()}: {', '.join(ready)}")
    for reader, why in m.missing.items():
        print(f"reader NOT set up: {reader}: {why}", file=sys.stderr)
    return 1 if m.missing else 0


if __name__ == "__main__":
    sys.exit(main())
