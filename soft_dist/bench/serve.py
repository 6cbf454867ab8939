"""`soft-dist bench serve`: `soft-dist serve` under load on loopback, against a bare in-process loop.

The application is started once in this process's Ray instance (as `soft-dist serve` starts it), then, in
each of ``--repeats`` rounds and in this order, every level runs once: the bare loop, then a load
generator at each concurrency of ``--concurrency`` (that many client threads, each sending one photo at a
time over its own keep-alive connection to POST /predict), then the same at the highest concurrency with
``--malformed`` of the requests replaced by bytes that are no image. A level stops after ``--requests``
requests or ``--seconds`` seconds, whichever comes first.

Measured per level and round: requests/s (good requests answered / wall time) and the p50 / p95 / p99
latency of good requests; reported as the median over rounds with the spread (lowest, highest). Every good
answer is checked against the bare loop's answer for the same photo (same class, probabilities within
1e-5), every malformed one for its 422.

The bare loop is what a server without Serve would do per request: for each photo in turn, in this
process, align it (MTCNN) and classify it (batch of one), with torch's default threads. Photos: real LFW
faces (scikit-image) upscaled to ``--source-size`` JPEGs; model: ``--model`` or an untrained, seeded
ResNet-18 with the RAF-DB config's input at ``--image-size`` (speed does not depend on the weights).
"""

from __future__ import annotations

import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from soft_dist.ports import free_local_port

PROB_TOLERANCE = 1e-5


def add_arguments(parser) -> None:
    parser.add_argument("--concurrency", default="1,4,16", help="client threads per level (default 1,4,16)")
    parser.add_argument("--requests", type=int, default=160, help="requests per level at most (default 160)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per level at most (default 30)")
    parser.add_argument("--malformed", type=float, default=0.05,
                        help="share of malformed requests in the last level (default 0.05; 0: no such level)")
    parser.add_argument("--photos", type=int, default=64, help="distinct face photos sent in turn (default 64)")
    parser.add_argument("--source-size", type=int, default=160, help="side of the photos (default 160)")
    parser.add_argument("--image-size", type=int, default=112, help="network input of the default model (default 112)")
    parser.add_argument("--model", help="a model.pt or run folder (or export folder with --backend onnxruntime)")
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch")
    parser.add_argument("--replicas", default="1", help="soft-dist serve --replicas (default 1)")
    parser.add_argument("--max-batch-size", type=int, default=16, help="soft-dist serve --max-batch-size (default 16)")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0, help="soft-dist serve --batch-wait-ms (default 10)")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] if ordered else float("nan")


class _Expected:
    """The bare loop's answers (photo index -> predicted class, probabilities) and the check of a reply."""

    def __init__(self, answers: list[dict]):
        self.answers = answers

    def matches(self, photo: int, reply: dict) -> bool:
        want = self.answers[photo]
        if reply.get("predicted") != want["predicted"] or (want["probabilities"] is None) != (reply.get("probabilities") is None):
            return False
        return want["probabilities"] is None or all(
            abs(reply["probabilities"][c] - p) <= PROB_TOLERANCE for c, p in want["probabilities"].items())


def load_level(port: int, photos: list[bytes], expected: _Expected, concurrency: int, requests: int,
               seconds: float, malformed: float) -> dict:
    """``concurrency`` client threads sharing ``requests`` requests (every 1/malformed-th one malformed) for
    at most ``seconds``: requests/s of good answers, latency percentiles, and the count of wrong answers."""
    bad_every = round(1 / malformed) if malformed > 0 else 0
    lock, next_request = threading.Lock(), iter(range(requests))
    latencies: list[float] = []
    wrong: list[str] = []
    counts = {"good": 0, "malformed": 0}
    deadline = time.perf_counter() + seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(next_request, None)
                if i is None:
                    return
                is_bad = bad_every and i % bad_every == bad_every - 1
                body = b"\x00not a photo %d" % i if is_bad else photos[i % len(photos)]
                sent = time.perf_counter()
                conn.request("POST", "/predict", body=body, headers={"Content-Type": "image/jpeg"})
                response = conn.getresponse()
                reply = json.loads(response.read())
                took = time.perf_counter() - sent
                with lock:
                    if is_bad:
                        counts["malformed"] += 1
                        if response.status != 422:
                            wrong.append(f"malformed request {i}: {response.status}")
                    else:
                        counts["good"] += 1
                        latencies.append(took)
                        if response.status != 200 or not expected.matches(i % len(photos), reply):
                            wrong.append(f"request {i}: {response.status} {reply.get('predicted')}")
        finally:
            conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"requests_per_s": counts["good"] / wall, "good": counts["good"], "malformed": counts["malformed"],
            "p50_ms": 1000 * _percentile(latencies, 50), "p95_ms": 1000 * _percentile(latencies, 95),
            "p99_ms": 1000 * _percentile(latencies, 99), "wrong": wrong}


def bare_loop(prepare, classify, photos: list[bytes], requests: int, seconds: float) -> tuple[dict, list[dict]]:
    """One photo at a time in this process: (photos/s, every photo's answer)."""
    import numpy as np

    from soft_dist.serve.prediction_files import rows

    answers, deadline, started, done = [], time.perf_counter() + seconds, time.perf_counter(), 0
    while done < requests and time.perf_counter() < deadline:
        data = photos[done % len(photos)]
        batch = prepare({"path": np.array(["photo"], dtype=object), "data": np.array([data], dtype=object)})
        [row] = rows(classify(batch), classify.spec.classes)
        if done < len(photos):
            answers.append(row)
        done += 1
    return {"requests_per_s": done / (time.perf_counter() - started), "good": done}, answers


def _summary(rounds: list[dict]) -> dict:
    out = {}
    for key in ("requests_per_s", "p50_ms", "p95_ms", "p99_ms"):
        values = [r[key] for r in rounds if key in r]
        if values:
            out[key] = statistics.median(values)
            out[f"{key}_spread"] = [min(values), max(values)]
    out["answered"] = sum(r["good"] for r in rounds)
    if any("malformed" in r for r in rounds):
        out["malformed_answered_422"] = sum(r["malformed"] for r in rounds)
    return out


def run(args) -> dict:
    from ray import serve

    from soft_dist.bench.predict import write_untrained_model
    from soft_dist.bench.shard import make_face_folder
    from soft_dist.ray_cluster import init_ray
    from soft_dist.serve.classifier import FaceClassifier, load_spec
    from soft_dist.serve.faces import AlignSettings, FacePreparer
    from soft_dist.web.app import APP_NAME, build_app
    from soft_dist.web.local import quiet_serve_logs
    from soft_dist.web.options import ServeOptions, parse_replicas

    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="soft-dist-bench-serve-") as tmp:
        tmp = Path(tmp)
        folder = make_face_folder(tmp / "photos", args.photos, args.source_size)
        photos = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
        model = args.model or str(write_untrained_model(tmp, args.image_size))
        spec = load_spec(model, args.backend)
        prepare = FacePreparer(AlignSettings.from_model(spec.alignment, spec.image_size))
        classify = FaceClassifier(spec)
        _, answers = bare_loop(prepare, classify, photos, len(photos), float("inf"))  # warm-up and the answers
        expected = _Expected(answers)
        options = ServeOptions(model=model, backend=args.backend, replicas=parse_replicas(args.replicas),
                               max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms)
        port = free_local_port()
        init_ray()
        quiet_serve_logs()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        started = time.perf_counter()
        serve.run(build_app(options), name=APP_NAME, route_prefix="/")
        startup_s = time.perf_counter() - started
        try:
            load_level(port, photos, expected, levels[-1], 2 * args.max_batch_size, args.seconds, 0)  # warm-up
            names = ["bare_loop", *(f"serve_c{c}" for c in levels)] + (
                [f"serve_c{levels[-1]}_malformed"] if args.malformed > 0 else [])
            measured: dict[str, list[dict]] = {name: [] for name in names}
            for r in range(args.repeats):
                for name in names:
                    if name == "bare_loop":
                        got, _ = bare_loop(prepare, classify, photos, args.requests, args.seconds)
                    else:
                        c = int(name.split("_c")[1].split("_")[0])
                        got = load_level(port, photos, expected, c, args.requests, args.seconds,
                                         args.malformed if name.endswith("malformed") else 0)
                        if got["wrong"]:
                            raise RuntimeError(f"bench serve: {name} got wrong answers: {got['wrong'][:5]}")
                    measured[name].append(got)
                    p99 = f", p99 {got['p99_ms']:.0f} ms" if "p99_ms" in got else ""
                    print(f"  round {r + 1}/{args.repeats} {name}: {got['requests_per_s']:.1f} req/s{p99}", flush=True)
        finally:
            serve.delete(APP_NAME)
    results = {name: _summary(rounds) for name, rounds in measured.items()}
    bare = results["bare_loop"]["requests_per_s"]
    top = f"serve_c{levels[-1]}"
    return {"photos": len(photos), "source_size": args.source_size, "image_size": spec.image_size,
            "model": model if args.model else "untrained ResNet-18 (speed only)", "backend": args.backend,
            "replicas": args.replicas, "max_batch_size": args.max_batch_size, "batch_wait_ms": args.batch_wait_ms,
            "startup_s": startup_s, "results": results,
            f"{top}_over_bare_loop": results[top]["requests_per_s"] / bare,
            "goals": {f"{top}_over_bare_loop >= 0.70": results[top]["requests_per_s"] / bare >= 0.70,
                      f"{top} p99 < 250 ms": results[top]["p99_ms"] < 250}}
