"""`soft-dist serve`: a trained model behind HTTP on Ray Serve, with a page to try it.

    soft-dist serve runs/rafdb-soft                          (http://127.0.0.1:8000/)
    soft-dist serve exported/rafdb-soft --backend onnxruntime --replicas 2 --port 9000
    curl -F photo=@face.jpg http://127.0.0.1:8000/predict

POST /predict answers with predict's row for the photo (face box, detector probability, predicted class,
every class's probability); POST /predict/batch takes several photos; GET / is a page to try it on.
"""

from __future__ import annotations

import argparse
import os

from soft_dist.cli.model_arg import add_model_argument
from soft_dist.serve.faces import DEFAULT_MAX_PIXELS

MB = 1024 * 1024


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a model over HTTP on Ray Serve (JSON API and a page to try it)",
                              description=__doc__.splitlines()[0],
                              epilog="Without --address (or RAY_ADDRESS) it starts its own Ray instance and "
                                     "stops it, and every process of it, on Ctrl-C. On a cluster use "
                                     "launch/serve_config.yaml with `serve deploy` (README: Serve a trained model).")
    add_model_argument(p, "MODEL")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                   help="torch: MODEL is a model.pt or run folder; onnxruntime: a folder from `soft-dist export`")
    p.add_argument("--replicas", default="1",
                   help="replicas of each of alignment and classification, or 'auto': between 1 and "
                        "--max-replicas, one more whenever a replica has more than a batch waiting (default 1)")
    p.add_argument("--max-replicas", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                   help="the most replicas per deployment with --replicas auto (default: half this machine's cores)")
    p.add_argument("--max-batch-size", type=int, default=16, help="photos per batch in each replica (default 16)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long a replica waits for a batch to fill (default 10 ms)")
    p.add_argument("--align", choices=("model", "mtcnn", "none"), default="model",
                   help="as `soft-dist predict --align` (default: as the training shards were made)")
    p.add_argument("--on-no-face", choices=("skip", "crop"), default="skip",
                   help="a photo without a face: answer face_found false (skip, default) or classify its centre")
    p.add_argument("--max-request-mb", type=float, default=20.0, help="largest request body (default 20 MB; 413 above)")
    p.add_argument("--max-image-pixels", type=int, default=50_000_000,
                   help="largest photo in pixels by its header (default 50,000,000; 422 above)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"photos are decoded to at most this many pixels, as in predict (default {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--replica-cpus", type=float, default=1.0,
                   help="CPUs each alignment or classification replica reserves (default 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--address", help="Ray cluster to deploy on (sets RAY_ADDRESS; default: a new local instance)")
    p.set_defaults(func=run)


def options_from(args: argparse.Namespace):
    """The ServeOptions of parsed arguments (ConfigError naming a bad one)."""
    from soft_dist.web.options import ServeOptions, parse_replicas

    return ServeOptions(model=args.model, backend=args.backend, replicas=parse_replicas(args.replicas),
                        max_replicas=args.max_replicas, max_batch_size=args.max_batch_size,
                        batch_wait_ms=args.batch_wait_ms, align=args.align, on_no_face=args.on_no_face,
                        max_pixels=args.max_pixels, device=args.device, replica_cpus=args.replica_cpus,
                        max_request_bytes=int(args.max_request_mb * MB), max_image_pixels=args.max_image_pixels)


def run(args: argparse.Namespace) -> int:
    from soft_dist.web.local import serve_until_stopped

    options = options_from(args)
    if args.address:
        os.environ["RAY_ADDRESS"] = args.address
    serve_until_stopped(options, args.host, args.port)
    return 0
