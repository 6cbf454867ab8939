"""`soft-dist serve`'s Ray Serve application: three deployments composed with ``.bind()``.

    HTTP -> gateway (routes, limits, JSON; no CPU reserved) -> align (MTCNN, as `soft-dist predict`)
                                                            -> classify (the network)

align and classify each form batches of the requests waiting for them (``@serve.batch``: up to
``max_batch_size`` photos, waiting at most ``batch_wait_ms`` for a batch to fill) and each has its own
replicas, so the CPU-heavy detector and the network scale apart. Both run the very callables `soft-dist
predict` runs (serve.faces.FacePreparer, serve.classifier.FaceClassifier), so a photo gets the same answer
from either (the answer's fields are predict's JSON-lines row, with ``file`` in place of ``path``).

Routes: GET / (the page), GET /healthz, GET /metadata (the model card), POST /predict (one photo: raw
body or multipart; ``?crop=1`` adds the aligned face as base64 JPEG), POST /predict/batch (multipart,
several photos; a list of answers, one per photo, each with its own status).

``build_app(options)`` is also the import path of a Serve config (launch/serve_config.yaml):
``soft_dist.web.app:app_builder`` with the options as ``args``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from importlib import resources

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from soft_dist.serve.classifier import FaceClassifier, load_spec
from soft_dist.serve.faces import CLASSIFIED, UNREADABLE, AlignSettings, FacePreparer
from soft_dist.serve.prediction_files import rows
from soft_dist.web.options import AUTO, ServeOptions
from soft_dist.web.uploads import TOO_MANY_PIXELS, Limits, RequestError, Upload, read_uploads

APP_NAME = "soft-dist"
ALIGN_DEPLOYMENT, CLASSIFY_DEPLOYMENT, GATEWAY_DEPLOYMENT = "align", "classify", "gateway"
GPU_PER_REPLICA = 0.5  # with --device cuda
logger = logging.getLogger("ray.serve")


def _columns(items: list[dict]) -> dict[str, np.ndarray]:
    """Per-photo dicts -> a batch of numpy columns (strings and bytes as object arrays: numpy's own bytes
    type would drop trailing zero bytes of a JPEG)."""
    out = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = (np.array(values, dtype=object) if isinstance(values[0], (str, bytes))
                    else np.stack([np.asarray(v) for v in values]))
    return out


def _items(batch: dict[str, np.ndarray]) -> list[dict]:
    """A batch of columns -> one dict per row."""
    n = len(next(iter(batch.values())))
    return [{key: column[i] for key, column in batch.items()} for i in range(n)]


class Aligner:
    """Photo bytes -> the aligned face (JPEG) with box, detector probability and status, in batches."""

    def __init__(self, settings: AlignSettings, options: ServeOptions):
        self.prepare = FacePreparer(settings, device=options.device, detector_batch=options.max_batch_size,
                                    torch_threads=options.torch_threads)
        self.align.set_max_batch_size(options.max_batch_size)
        self.align.set_batch_wait_timeout_s(options.batch_wait_ms / 1000)

    @serve.batch
    async def align(self, uploads: list[tuple[str, bytes]]) -> list[dict]:
        batch = {"path": np.array([name for name, _ in uploads], dtype=object),
                 "data": np.array([data for _, data in uploads], dtype=object)}
        return _items(self.prepare(batch))


class Classifier:
    """Aligned faces -> predict's result rows (class probabilities), in batches."""

    def __init__(self, options: ServeOptions):
        self.spec = load_spec(options.model, options.backend)
        self.classify_faces = FaceClassifier(self.spec, device=options.device, torch_threads=options.torch_threads)
        self.classify.set_max_batch_size(options.max_batch_size)
        self.classify.set_batch_wait_timeout_s(options.batch_wait_ms / 1000)

    @serve.batch
    async def classify(self, prepared: list[dict]) -> list[dict]:
        return rows(self.classify_faces(_columns(prepared)), self.spec.classes)


def _refused(upload: Upload) -> dict:
    """The answer for a photo refused before alignment, shaped as every other answer."""
    return {"file": upload.name, "status": upload.status, "face_found": None, "box": None, "face_prob": None,
            "predicted": None, "probabilities": None, "error": upload.error}


def _page() -> str:
    return resources.files("soft_dist.web").joinpath("page.html").read_text()


def _wants_crop(request: Request) -> bool:
    return request.query_params.get("crop") in ("1", "true")


class Gateway:
    """The HTTP ingress: routes, request limits, and the two calls per photo (align, then classify)."""

    def __init__(self, aligner, classifier, card: dict, limits: Limits):
        self.aligner, self.classifier, self.limits = aligner, classifier, limits
        page = _page()
        self.routes = {("GET", "/"): lambda r: HTMLResponse(page),
                       ("GET", "/healthz"): lambda r: JSONResponse({"status": "ok", "model": card["source"]}),
                       ("GET", "/metadata"): lambda r: JSONResponse(card),
                       ("POST", "/predict"): self.predict_one,
                       ("POST", "/predict/batch"): self.predict_many}

    async def answer(self, upload: Upload, crop: bool) -> dict:
        """One photo's answer: predict's row, with ``file`` for ``path`` (and the crop when asked)."""
        if upload.status:
            return _refused(upload)
        prepared = await self.aligner.align.remote((upload.name, upload.data))
        row = await self.classifier.classify.remote(prepared)
        answer = {"file": upload.name, **{k: v for k, v in row.items() if k != "path"}}
        if crop and prepared["status"] in CLASSIFIED:
            answer["face_jpeg_base64"] = base64.b64encode(prepared["jpeg"]).decode("ascii")
        return answer

    async def predict_one(self, request: Request) -> Response:
        [upload] = await read_uploads(request, self.limits, many=False)
        answer = await self.answer(upload, crop=_wants_crop(request))
        # a photo that could not be read is the client's error; no face is an answer (200, face_found false)
        status = 422 if answer["status"] in (UNREADABLE, TOO_MANY_PIXELS) else 200
        return JSONResponse(answer, status_code=status)

    async def predict_many(self, request: Request) -> Response:
        uploads = await read_uploads(request, self.limits, many=True)
        crop = _wants_crop(request)
        answers = await asyncio.gather(*(self.answer(u, crop) for u in uploads))
        return JSONResponse({"results": list(answers)})

    async def __call__(self, request: Request) -> Response:
        path, method = request.url.path.rstrip("/") or "/", request.method
        routes = self.routes
        handler = routes.get((method, path))
        try:
            if handler is None:
                if any(p == path for _, p in routes):
                    allowed = ", ".join(m for m, p in routes if p == path)
                    raise RequestError(405, f"{path} takes {allowed}, not {method}")
                raise RequestError(404, f"no route {path}; routes: " + ", ".join(f"{m} {p}" for m, p in routes))
            response = handler(request)
            return await response if not isinstance(response, Response) else response
        except RequestError as err:
            return JSONResponse({"error": err.message}, status_code=err.status)
        except Exception as err:  # a bug must cost one request a 500, never the replica
            logger.exception("soft-dist serve: %s %s failed", method, path)
            return JSONResponse({"error": f"internal error: {type(err).__name__}: {err}"}, status_code=500)


def model_card(options: ServeOptions) -> dict:
    """GET /metadata's answer: the model card of the served model (built from model.pt's metadata, or the
    card that `soft-dist export` wrote beside model.onnx), with what this server runs."""
    if options.backend == "torch":
        from soft_dist.serve.model_card import build_card
        from soft_dist.serve.network import read_model

        card = build_card(read_model(options.model), files=[])
    else:
        from soft_dist.serve.classifier import onnx_files

        card = json.loads(onnx_files(options.model)[1].read_text())
    card["serving"] = {"backend": options.backend, "replicas": options.replicas,
                       "max_batch_size": options.max_batch_size, "batch_wait_ms": options.batch_wait_ms,
                       "align": options.align, "on_no_face": options.on_no_face}
    return card


def _scaling(options: ServeOptions, target: int) -> dict:
    """Replica settings of align / classify: a fixed count, or autoscaling that adds a replica when more
    than ``target`` requests wait per replica (a full batch), between 1 and max_replicas."""
    if options.replicas == AUTO:
        return {"autoscaling_config": {"min_replicas": 1, "max_replicas": options.max_replicas,
                                       "target_ongoing_requests": target, "upscale_delay_s": 5,
                                       "downscale_delay_s": 60}}
    return {"num_replicas": options.replicas}


def build_app(options: ServeOptions):
    """The bound application for ``options`` (checks the model file here, in the caller, so that a bad path
    fails before any replica starts)."""
    spec = load_spec(options.model, options.backend)
    settings = AlignSettings.from_model(spec.alignment, spec.image_size, options.align, options.on_no_face,
                                        options.max_pixels)
    card = model_card(options)
    batch = options.max_batch_size
    # Each replica takes up to two batches of requests at once (one running, one filling); Serve's default
    # of 5 would cap every batch at 5 photos.
    resources = {"num_cpus": options.replica_cpus}
    if options.device.startswith("cuda"):
        # an alignment and a classification replica share one GPU (MTCNN and a ResNet-18 need little memory)
        resources["num_gpus"] = GPU_PER_REPLICA
    actor = {"ray_actor_options": resources, "max_ongoing_requests": 2 * batch}
    align = serve.deployment(Aligner, name=ALIGN_DEPLOYMENT, **actor, **_scaling(options, batch))
    classify = serve.deployment(Classifier, name=CLASSIFY_DEPLOYMENT, **actor, **_scaling(options, batch))
    gateway = serve.deployment(Gateway, name=GATEWAY_DEPLOYMENT, ray_actor_options={"num_cpus": 0},
                               max_ongoing_requests=max(64, 8 * batch))
    return gateway.bind(align.bind(settings, options), classify.bind(options), card, options.limits)


def app_builder(args: dict):
    """Entry point of a Serve config (``import_path: soft_dist.web.app:app_builder``): ``args`` holds
    ServeOptions' fields (model required)."""
    return build_app(ServeOptions.from_dict(dict(args)))
