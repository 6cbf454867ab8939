"""`soft-dist shard`: a dataset layout -> aligned WebDataset shards + manifest (docs/sharding.md).

    soft-dist shard --layout rafdb --root ~/data/RAF-DB --out data_shards/rafdb
    soft-dist shard --verify data_shards/rafdb
"""

from __future__ import annotations

import argparse
import sys

LAYOUTS = ("rafdb", "affectnet", "ferplus", "imagefolder", "csv", "digits")


def register(subparsers) -> None:
    p = subparsers.add_parser("shard", help="turn a dataset into aligned WebDataset shards (or --verify them)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--layout", choices=LAYOUTS, help="input layout (see docs/sharding.md)")
    p.add_argument("--root", help="dataset folder (not needed for digits)")
    p.add_argument("--out", help="output folder (default data_shards/<layout>)")
    p.add_argument("--verify", metavar="OUT", help="re-read every shard in OUT and check it against the manifest")
    p.add_argument("--decode", action="store_true", help="with --verify: fully decode every JPEG")
    g = p.add_argument_group("images")
    g.add_argument("--size", type=int, default=224, help="output side in pixels (default 224)")
    g.add_argument("--align", default="auto", choices=("auto", "mtcnn", "none"),
                   help="auto: mtcnn, except none for digits, ferplus and RAF-DB's Image/aligned")
    g.add_argument("--margin", type=float, default=0.2,
                   help="context around the face: the template shrinks by 1/(1+margin) (default 0.2)")
    g.add_argument("--on-no-face", default="crop", choices=("crop", "skip"),
                   help="no face found: centred crop (counted) or leave the image out (counted)")
    g.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    g = p.add_argument_group("splits and shards")
    g.add_argument("--shard-size", type=int, default=1000, help="most samples per shard (default 1000)")
    g.add_argument("--min-shards", type=int, default=128,
                   help="at least this many shards per split when there are enough samples (default 128 = "
                        "32 ranks x 4 loader workers)")
    g.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of train carved into val when the layout has no val split (default 0.1)")
    g.add_argument("--seed", type=int, default=0, help="seed of the stratified val split (default 0)")
    g = p.add_argument_group("layout options")
    g.add_argument("--classes", help="comma-separated class order (imagefolder, csv)")
    g.add_argument("--csv", dest="csv_file", help="csv layout: the CSV file (default ROOT/labels.csv)")
    g.add_argument("--image-dir", default="auto", choices=("auto", "original", "aligned"),
                   help="rafdb: which image folder (auto: original with mtcnn, aligned with none)")
    g.add_argument("--affectnet-classes", type=int, default=8, choices=(7, 8), help="affectnet: 7 or 8 classes")
    g = p.add_argument_group("execution")
    g.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    g.add_argument("--backend", default="process", choices=("process", "ray"),
                   help="process pool, or Ray tasks over chunks (RAY_ADDRESS joins a cluster)")
    g.add_argument("--ray", dest="backend", action="store_const", const="ray", help="same as --backend ray")
    g.add_argument("--device", default="cpu", help="MTCNN device, e.g. cpu or cuda:0")
    g.add_argument("--batch-size", type=int, default=16, help="MTCNN batch size")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from soft_dist.shard.layouts import LayoutError

    try:
        if args.verify:
            return _verify(args)
        if not args.layout:
            raise LayoutError("--layout is required (or --verify OUT)")
        return _build(args)
    except (LayoutError, ValueError) as err:
        print(f"soft-dist shard: error: {err}", file=sys.stderr)
        return 2


def _build(args: argparse.Namespace) -> int:
    from soft_dist.shard.build import ShardConfig, build_shards

    config = ShardConfig(
        layout=args.layout, root=args.root, out=args.out, size=args.size, align=args.align, margin=args.margin,
        quality=args.quality, on_no_face=args.on_no_face, shard_size=args.shard_size, min_shards=args.min_shards,
        val_fraction=args.val_fraction, seed=args.seed,
        classes=[c.strip() for c in args.classes.split(",")] if args.classes else None,
        image_dir=args.image_dir, affectnet_classes=args.affectnet_classes, csv_file=args.csv_file,
        workers=args.workers, backend=args.backend, device=args.device, batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    m = build_shards(config)
    out = config.out or f"data_shards/{config.layout}"
    a = m["alignment"]
    print(f"soft-dist shard: {m['dataset']} -> {out}")
    for name, split in m["splits"].items():
        print(f"  {name:<5} {split['num_samples']:>8} samples in {len(split['shards'])} shards")
    print(f"  alignment {a['method']}: faces {a['faces_found']}, centred-crop fallbacks {a['fallbacks']}, "
          f"skipped (no face) {a['skipped_no_face']}, unreadable {a['failures']}")
    print(f"  input problems (missing files, unknown labels, bad rows): {m['input_problems']['count']}")
    print(f"  {m['build']['shards_kept']} shards kept from an earlier run, {m['build']['shards_written']} written "
          f"in {m['build']['seconds']:.1f} s; details in {out}/manifest.json")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from soft_dist.shard.verify import verify_shards

    report = verify_shards(args.verify, decode=args.decode)
    if report["ok"]:
        print(f"soft-dist shard --verify: OK: {report['num_samples']} samples in {report['num_shards']} shards "
              f"match {args.verify}/manifest.json")
        return 0
    print(f"soft-dist shard --verify: {len(report['errors'])} problem(s) in {args.verify}:", file=sys.stderr)
    for line in report["errors"]:
        print(f"  {line}", file=sys.stderr)
    return 1
