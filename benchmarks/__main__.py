"""``python -m benchmarks [CONFIG | --quick | --full]``: run a declared benchmark and write its report."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vqp.errors import VqpError

CONFIGS = Path(__file__).resolve().parent / "configs"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="Rate-distortion, BD-rate and detection "
                                "mAP of vqp against plain and peer encoders (resumable).")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("config", nargs="?", help="YAML run declaration")
    g.add_argument("--quick", action="store_true", help=f"the preset {CONFIGS / 'quick.yaml'} (minutes on 2 cores)")
    g.add_argument("--full", action="store_true", help=f"the preset {CONFIGS / 'full.yaml'} (everything)")
    p.add_argument("--out", help="output folder (default: the config's 'out', else out/bench/NAME)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "true")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    from . import harness, report

    path = CONFIGS / "quick.yaml" if args.quick else CONFIGS / "full.yaml" if args.full else Path(args.config)
    try:
        from . import service

        if service.is_load_config(path):  # `kind: service`: a load test of `vqp serve`, not a codec run
            return service.run_config(path, args.out)
        from . import batch

        if batch.is_batch_config(path):  # `kind: batch`: throughput of `vqp batch`, in-process and on Ray
            return batch.run_config(path, args.out)
        cfg = harness.load_config(path, args.out)
        runner = harness.Runner(cfg, progress=not args.no_progress)
        records = runner.run()
        rows = harness.summarize(records, runner.gt)
        bd = harness.bd_rates(rows, cfg.codecs)
        files = report.write(cfg.out, cfg.name, records, rows, bd)
    except VqpError as e:
        print(f"benchmarks: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("benchmarks: interrupted; finished points are kept and the next run resumes", file=sys.stderr)
        return 130
    print(f"{len(records)} points; wrote {', '.join(sorted(str(f.name) for f in files.values()))} in {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
