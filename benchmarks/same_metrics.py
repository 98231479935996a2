"""Whether two results.json files hold the same numbers: every metric, density and method fact, compared
as JSON text (so byte for byte), leaving out run times, file paths and the wording of ``selection``.

    python3 benchmarks/same_metrics.py BEFORE/results.json AFTER/results.json   # exit 0: identical
"""
from __future__ import annotations

import json
import sys
from typing import Any

WORDS_AND_PLACES = ("time_s", "checkpoint", "error_set_file", "selection")


def numbers(results: dict[str, Any]) -> dict[str, Any]:
    """The top-level splits and density and each method's entry without :data:`WORDS_AND_PLACES`."""
    methods = {name: {k: v for k, v in entry.items() if k not in WORDS_AND_PLACES}
               for name, entry in results["methods"].items()}
    return {"splits": results["splits"], "density": results.get("density"), "methods": methods}


def main(argv: list[str] | None = None) -> int:
    before, after = (numbers(json.loads(open(path).read())) for path in (sys.argv[1:] if argv is None else argv))
    differ = [name for name in before["methods"].keys() | after["methods"].keys()
              if json.dumps(before["methods"].get(name), sort_keys=True)
              != json.dumps(after["methods"].get(name), sort_keys=True)]
    differ += [key for key in ("splits", "density") if json.dumps(before[key]) != json.dumps(after[key])]
    print("identical" if not differ else f"different: {', '.join(sorted(differ))}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
