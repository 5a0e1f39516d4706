"""The Ray Serve application: one deployment holding a trained model (checkpoint or fold ensemble).

    POST /predict   WAV/FLAC bytes, or JSON {"audio": base64, "sample_rate": N, "speaker": ...}
                    -> {"emotion", "probabilities", "model", "normalization", "duration_s", "speaker"}
    GET  /healthz   -> {"status": "ok", "model": name}
    GET  /model     -> labels, feature spec, ensemble, normalisation, protocol and scores of the run

Inference is `Predictor.probabilities` (the same features, normalisation and ensemble averaging as
`ser-dist predict`); concurrent requests are grouped by `@serve.batch`. Build it from Python with
`build_app({"model": "runs/<name>"})`, from a Serve config (`import_path:
ser_dist.serve.app:build_app`, see deploy/serve_config.yaml), or with `ser-dist serve`.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) at runtime.
import asyncio
import logging
from dataclasses import dataclass, field, fields

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from ser_dist.audio import TARGET_SAMPLE_RATE
from ser_dist.errors import ConfigError
from ser_dist.serve.requests import (
    RequestError,
    RequestLimits,
    check_body_size,
    decode_request,
    describe_limits,
)

logger = logging.getLogger(__name__)

api = FastAPI(title="ser-dist", description="speech emotion recognition")


@dataclass(frozen=True)
class ServeAppConfig:
    """The `args` of the Serve application (strings and numbers only, as a Serve config gives them)."""

    model: str  # a checkpoint folder or a run folder runs/<name>, readable on every replica's node
    max_batch_size: int = 16  # @serve.batch; 1 turns batching off
    batch_wait_timeout_s: float = 0.01
    device: str = "cpu"
    limits: RequestLimits = field(default_factory=RequestLimits)

    @classmethod
    def from_args(cls, args: dict) -> "ServeAppConfig":
        valid = {f.name for f in fields(cls)} | {f.name for f in fields(RequestLimits)}
        unknown = sorted(set(args) - valid)
        if unknown or "model" not in args:
            problem = f"unknown keys {unknown}" if unknown else "no \"model\""
            raise ConfigError(f"Serve application args: {problem}; expected model and some of {', '.join(sorted(valid - {'model', 'limits'}))}")
        limit_keys = {f.name for f in fields(RequestLimits)}
        limits = RequestLimits(**{k: v for k, v in args.items() if k in limit_keys})
        return cls(**{k: v for k, v in args.items() if k not in limit_keys}, limits=limits)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@serve.deployment(name="EmotionRecognizer", max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class EmotionRecognizer:
    def __init__(self, config: ServeAppConfig):
        from ser_dist.prediction.card import model_card
        from ser_dist.prediction.predictor import Predictor

        self.config = config
        # a per-speaker model scores each request by its own statistics (no speaker enrolment here); every
        # answer says so in "normalization"
        self.predictor = Predictor.from_dir(self.config.model, device=self.config.device,
                                            batch_size=max(1, self.config.max_batch_size), normalization="utterance")
        self.card = model_card(self.predictor) | {"limits": describe_limits(self.config.limits)}
        self.normalization = self.predictor.input_normalization(None)  # train_global, or utterance for per-speaker models
        self.card["normalization_at_serving"] = self.normalization
        self._batched.set_max_batch_size(max(1, self.config.max_batch_size))
        self._batched.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)
        self.batch_sizes: list[int] = []  # sizes of the batches run, for /stats

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _batched(self, signals: list[np.ndarray]) -> list[np.ndarray]:
        self.batch_sizes.append(len(signals))
        probabilities = await asyncio.get_running_loop().run_in_executor(None, self.predictor.probabilities, signals)
        return list(probabilities)

    @api.post("/predict")
    async def predict(self, request: Request):
        try:
            check_body_size(request.headers.get("content-length"), self.config.limits)
            audio = decode_request(await request.body(), request.headers.get("content-type"), self.config.limits)
        except RequestError as exc:
            return _error(exc.status, exc.message)
        row = await self._batched(audio.signal)
        labels = self.predictor.labels
        return {
            "emotion": labels[int(np.argmax(row))],
            "probabilities": {label: float(p) for label, p in zip(labels, row, strict=True)},
            "model": self.card["name"],
            "normalization": self.normalization,
            "duration_s": len(audio.signal) / TARGET_SAMPLE_RATE,
            "speaker": audio.speaker,
        }

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "model": self.card["name"]}

    @api.get("/model")
    async def model(self):
        return self.card

    @api.get("/stats")
    async def stats(self):
        sizes = self.batch_sizes
        return {"batches": len(sizes), "requests": int(sum(sizes)), "max_batch": max(sizes, default=0)}


def build_app(args: dict) -> serve.Application:
    """The application for `serve run` / `serve deploy` (import_path ser_dist.serve.app:build_app)."""
    return EmotionRecognizer.bind(ServeAppConfig.from_args(dict(args)))
