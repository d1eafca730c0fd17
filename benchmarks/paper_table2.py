"""The paper's Table 2, in its shape: DSVs against DC, DSA and DM at the same number of real images
seen per class (``shots``), under one retraining protocol (the pipeline's [retrain] table).

Run through ``benchmarks/distill.py --table2`` (it owns the base model, the data and the
retraining; the rows, ablations and claims are in dsv/bench/table2.py). With that JSON, this
prints it as Markdown tables; on its own, it lists the rows and the ablations:

    python benchmarks/paper_table2.py [out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dsv.bench.table2 import markdown, plan


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="the paper's Table 2; run it as: python benchmarks/distill.py --pipeline "
        "pipelines/paper_fashion_mnist.toml --table2 --json out.json"
    )
    parser.add_argument("json", nargs="?", help="a --table2 JSON: print it as Markdown tables")
    args = parser.parse_args(argv)
    print(markdown(json.loads(Path(args.json).read_text())) if args.json else "\n".join(plan()))


if __name__ == "__main__":
    main()
