"""Draw a digit: a web page and a JSON API on the champion model (or a local checkpoint), served on loopback.

  digits-app                                      # models:/<register.model_name>@champion, http://127.0.0.1:8000
  digits-app --checkpoint models/model.pt --port 8001
  curl -F file=@digit.png http://127.0.0.1:8000/api/predict
  curl --data-binary @digit.png -H 'Content-Type: image/png' http://127.0.0.1:8000/api/predict

``POST /api/predict`` takes one image (PNG, JPEG, BMP, GIF or WEBP; any size, colour and polarity), as the raw
request body with an ``image/*`` content type or as the multipart field ``file``. It prepares the image MNIST-style,
exactly as ``digits-predict`` does, and answers ``{"class", "confidence", "probabilities", "prepared"}``, where
``prepared`` is the 28×28 image the model saw (rows of values in [0, 1], ink bright). Bad input is answered with
``{"error": message}`` and 400 (empty, malformed multipart), 413 (over the size limit), 415 (not an image content
type) or 422 (not decodable, no digit found); the app keeps serving.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from digits import imageprep, predict
from digits.errors import UserError

WEBAPP = Path(__file__).with_name("webapp")  # the page's HTML, JavaScript and CSS: no CDN, works offline
MAX_REQUEST_BYTES = 8 * 1024 * 1024
IMAGE_TYPES = ("image/", "application/octet-stream")


class BadRequest(Exception):
    """Input the API refuses: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is declared or turns out to be longer than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"request of {int(declared):,} bytes is over the {limit:,}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"request is over the {limit:,}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def image_bytes(request: Request, limit: int) -> tuple[bytes, str]:
    """(image data, a name for messages) from a raw ``image/*`` body or the multipart field ``file``."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    multipart = content_type == "multipart/form-data"
    if not (multipart or content_type.startswith(IMAGE_TYPES)):
        raise BadRequest(
            415, f"content type {content_type or '(none)'!r}: send an image/* body or multipart/form-data with 'file'"
        )
    body = await read_body(request, limit)
    if not multipart:
        if not body:
            raise BadRequest(400, "empty request body: send the image file's bytes")
        return body, "upload"

    async def receive() -> dict:  # the body already read (and limited), for Starlette's multipart parser
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, receive).form(max_files=1, max_fields=4)
    except (MultiPartException, HTTPException) as exc:
        raise BadRequest(400, f"malformed multipart body: {getattr(exc, 'detail', None) or exc}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise BadRequest(400, "multipart request without a file field named 'file'")
    name = upload.filename or "file"
    data = await upload.read()
    if not data:
        raise BadRequest(400, f"{name}: empty file")
    return data, name


def create_app(classify: predict.Classifier, model: str, max_bytes: int = MAX_REQUEST_BYTES) -> FastAPI:
    """The page and the API over ``classify``; ``model`` names it on the page and in ``/api/health``."""
    app = FastAPI(title="digits", docs_url=None, redoc_url=None)  # the interactive docs load assets from a CDN
    one_at_a_time = threading.Lock()  # torch already uses every core for one batch; concurrent calls only contend

    def answer(data: bytes, name: str) -> dict:
        image = imageprep.from_bytes(data, name)
        with one_at_a_time:
            [result] = predict.answers(classify(image[None]))
        return result | {"prepared": np.round(image, 4).tolist()}

    @app.exception_handler(BadRequest)
    async def refuse(request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEBAPP / "index.html")

    @app.get("/api/health")
    async def health() -> dict:
        return {"status": "ok", "model": model}

    @app.post("/api/predict")
    async def predict_image(request: Request) -> dict:
        data, name = await image_bytes(request, max_bytes)
        try:
            return await run_in_threadpool(answer, data, name)
        except imageprep.ImageError as exc:
            raise BadRequest(422, str(exc)) from None

    app.mount("/static", StaticFiles(directory=WEBAPP), name="static")
    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="digits-app", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--model", help="MLflow model URI (default: models:/<register.model_name>@champion)")
    source.add_argument("--checkpoint", help="a local checkpoint written by the train stage (models/model.pt)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--max-bytes", type=int, default=MAX_REQUEST_BYTES, help="largest request body accepted")
    args = ap.parse_args(argv)
    model = args.checkpoint or args.model or predict.default_model_uri()
    try:
        classify = predict.checkpoint_classifier(model) if args.checkpoint else predict.mlflow_classifier(model)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    print(f"digits app: http://{args.host}:{args.port}/ (model {model})", file=sys.stderr, flush=True)
    uvicorn.run(create_app(classify, model, args.max_bytes), host=args.host, port=args.port, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
