"""Frame-level features from a pretrained transformers speech encoder (HuBERT, wav2vec 2.0, WavLM, Whisper).

`SSLEncoder(config).encode(signals)` turns 16 kHz mono signals into one (T_i, dim) float32 matrix each,
taken from the hidden layer(s) named by `SSLConfig.layers` (several are averaged). T_i is
`n_frames(len(signal))`: the frames that cover real audio, never padding.

Batching never changes a signal's frames:
- wav2vec2-family models with layer-norm feature extractors get an attention mask, so padding is masked.
- wav2vec2-family models with a group-norm feature extractor (hubert-base, wav2vec2-base) normalise each
  CNN channel over the whole (padded) input, and HF's rule is not to pass them an attention mask, so zero
  padding would shift the statistics of every real frame. Those models are only batched with signals of
  exactly the same length, i.e. never padded.
- Whisper pads every input to 30 s by design; each 30-s chunk is encoded on its own, so batches do not
  interact. Longer signals are split into 30-s chunks whose frames are concatenated.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import EntryNotFoundError
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, WhisperFeatureExtractor

from ser_dist.errors import AudioError, ConfigError, ModelLoadError
from ser_dist.features.config import SSLConfig

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
_CONFIG_FILES = ["config.json", "preprocessor_config.json"]
_WEIGHT_PATTERNS = (
    "model*.safetensors",
    "pytorch_model*.bin",
)  # safetensors first, as transformers loads them
_LOAD_ERRORS = (
    OSError,
    ValueError,
    EntryNotFoundError,
)  # what transformers / huggingface_hub raise on a bad source
_HUB_PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


class EncoderFamily(StrEnum):
    WAV2VEC2 = "WAV2VEC2"  # raw waveform + CNN front end: HuBERT, wav2vec 2.0, WavLM, data2vec-audio
    WHISPER = "WHISPER"  # log-mel input padded to 30 s


class SSLEncoder:
    """One pretrained speech encoder, loaded once, in eval mode, on `device`."""

    def __init__(self, config: SSLConfig, *, device: str | torch.device = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.model_id = config.model
        source, folder, local_only = _locate(config.model)
        hf_config = _load(AutoConfig.from_pretrained, str(folder), local_only=True, model=config.model)
        self.family = _family_of(hf_config, config.model)
        n_layers = (
            hf_config.encoder_layers if self.family is EncoderFamily.WHISPER else hf_config.num_hidden_layers
        )
        self.n_hidden_states = n_layers + 1  # embeddings/CNN output + one per block
        self.layers = _check_layers(config.layers, self.n_hidden_states, config.model)
        self.dtype = torch.float16 if self.device.type == "cuda" and config.half_on_gpu else torch.float32
        # transformers 5 loads with dtype="auto" by default (float16 for whisper-tiny.en): ask for ours.
        model = _load(
            AutoModel.from_pretrained,
            source,
            local_only=local_only,
            model=config.model,
            config=hf_config,
            dtype=self.dtype,
        )
        if self.family is EncoderFamily.WHISPER:
            model = model.get_encoder()  # the decoder is dropped with `model`
        self.model = model.to(self.device).eval()
        self.dim: int = hf_config.hidden_size
        self.weight_hash = hash_weights(folder)
        if self.family is EncoderFamily.WHISPER:
            self._whisper_input = _whisper_feature_extractor(folder, hf_config)
            self._chunk_samples = self._whisper_input.n_samples  # 30 s
            self._samples_per_frame = self._chunk_samples // hf_config.max_source_positions  # 320
            self.frame_rate = SAMPLE_RATE / self._samples_per_frame
        else:
            self._do_normalize = _wav2vec2_do_normalize(folder, config.model)
            # HF's rule: only layer-norm feature extractors were trained with (and accept) an attention mask.
            self._masked = hf_config.feat_extract_norm == "layer"
            self.frame_rate = SAMPLE_RATE / math.prod(hf_config.conv_stride)
        logger.info(
            "loaded %s (%s, %d hidden states, dim %d, layers %s) on %s as %s",
            config.model,
            self.family.value,
            self.n_hidden_states,
            self.dim,
            self.layers,
            self.device,
            self.dtype,
        )

    def n_frames(self, n_samples: int) -> int:
        """Frames the encoder yields for a 16 kHz signal of `n_samples` samples (0 if too short for one)."""
        if self.family is EncoderFamily.WHISPER:
            return -(-n_samples // self._samples_per_frame)
        return max(0, int(self.model._get_feat_extract_output_lengths(torch.tensor(n_samples))))

    @torch.inference_mode()
    def encode(self, signals: list[np.ndarray]) -> list[np.ndarray]:
        """One (T_i, dim) float32 matrix per 16 kHz mono float32 signal, in input order."""
        signals = [self._checked(signal, i) for i, signal in enumerate(signals)]
        if not signals:
            return []
        if self.family is EncoderFamily.WHISPER:
            return self._encode_whisper(signals)
        return self._encode_wav2vec2(signals)

    def _checked(self, signal: np.ndarray, index: int) -> np.ndarray:
        signal = np.asarray(signal, dtype=np.float32)
        if signal.ndim != 1:
            raise AudioError(f"<signal {index}>", f"expected a mono signal of shape (N,), got {signal.shape}")
        if self.n_frames(signal.size) < 1:
            raise AudioError(
                f"<signal {index}>",
                f"too short for {self.model_id}: {signal.size} samples give no encoder frame",
            )
        return signal

    def _layer_average(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        picked = [hidden_states[i].float() for i in self.layers]  # each (B, T, D)
        return picked[0] if len(picked) == 1 else torch.stack(picked).mean(dim=0)

    def _check_hidden_states(self, hidden_states: tuple[torch.Tensor, ...]) -> None:
        if len(hidden_states) != self.n_hidden_states:
            raise ModelLoadError(
                f"{self.model_id} returned {len(hidden_states)} hidden states, its config promises "
                f"{self.n_hidden_states}; this transformers version is not supported for it"
            )

    def _encode_wav2vec2(self, signals: list[np.ndarray]) -> list[np.ndarray]:
        if self._do_normalize:  # per utterance, over its real samples only (as Wav2Vec2FeatureExtractor)
            signals = [(x - x.mean()) / np.sqrt(x.var() + 1e-7) for x in signals]
        lengths = [len(x) for x in signals]
        max_samples = int(self.config.max_batch_seconds * SAMPLE_RATE)
        out: list[np.ndarray | None] = [None] * len(signals)
        for batch in length_batches(lengths, max_samples, same_length_only=not self._masked):
            padded = np.zeros(
                (len(batch), lengths[batch[0]]), dtype=np.float32
            )  # (B, N_max); batch[0] is longest
            mask = np.zeros(padded.shape, dtype=np.int64)
            for row, i in enumerate(batch):
                padded[row, : lengths[i]] = signals[i]
                mask[row, : lengths[i]] = 1
            inputs = torch.from_numpy(padded).to(self.device, self.dtype)
            kwargs = {"attention_mask": torch.from_numpy(mask).to(self.device)} if self._masked else {}
            hidden_states = self.model(inputs, output_hidden_states=True, **kwargs).hidden_states
            self._check_hidden_states(hidden_states)
            frames = self._layer_average(hidden_states).cpu().numpy()  # (B, T_max, D)
            n_frames = self.model._get_feat_extract_output_lengths(torch.tensor([lengths[i] for i in batch]))
            for row, i in enumerate(batch):
                out[i] = frames[row, : int(n_frames[row])].copy()
        return out

    def _encode_whisper(self, signals: list[np.ndarray]) -> list[np.ndarray]:
        chunks = [
            (i, signal[start : start + self._chunk_samples])
            for i, signal in enumerate(signals)
            for start in range(0, len(signal), self._chunk_samples)
        ]
        per_call = max(1, int(self.config.max_batch_seconds * SAMPLE_RATE) // self._chunk_samples)
        pieces: list[list[np.ndarray]] = [[] for _ in signals]
        for first in range(0, len(chunks), per_call):
            batch = chunks[first : first + per_call]
            features = self._whisper_input(
                [chunk for _, chunk in batch],
                sampling_rate=SAMPLE_RATE,
                return_tensors="pt",
                device=self.device.type,
            ).input_features  # (B, n_mels, 3000): each chunk padded to 30 s on its own
            hidden_states = self.model(
                features.to(self.device, self.dtype), output_hidden_states=True
            ).hidden_states
            self._check_hidden_states(hidden_states)
            frames = self._layer_average(hidden_states).cpu().numpy()  # (B, 1500, D)
            for row, (i, chunk) in enumerate(batch):
                pieces[i].append(frames[row, : self.n_frames(len(chunk))])
        return [np.concatenate(parts, axis=0) for parts in pieces]


def length_batches(
    lengths: list[int], max_samples: int, *, same_length_only: bool = False
) -> list[list[int]]:
    """Indices grouped longest first, each group's padded size (count x longest) at most `max_samples`.

    A signal longer than `max_samples` gets a group of its own. With `same_length_only`, a group holds
    signals of one length only, so nothing is padded.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches:
            current = batches[-1]
            longest = lengths[current[0]]
            fits = (len(current) + 1) * longest <= max_samples
            if fits and (not same_length_only or lengths[i] == longest):
                current.append(i)
                continue
        batches.append([i])
    return batches


def hash_weights(folder: Path) -> str:
    """First 16 hex digits of the sha256 of the weight files in `folder` (names and bytes)."""
    for pattern in _WEIGHT_PATTERNS:
        files = sorted(folder.glob(pattern))
        if files:
            break
    else:
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise ModelLoadError(f"no weight file ({' or '.join(_WEIGHT_PATTERNS)}) in {folder}; found {found}")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]


def _locate(model: str) -> tuple[str, Path, bool]:
    """(what to pass to from_pretrained, the local folder holding its files, local files only?)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path), path, True
    if path.exists() or model.startswith(("/", ".", "~")) or model.count("/") > 1:
        raise ModelLoadError(
            f"SSL model directory {path} does not exist (or is not a directory); pass a folder holding "
            f"config.json and model weights with --ssl-model DIR"
        )
    offline = _hub_offline()
    if not offline and not _hub_reachable():
        logger.info(
            "%s is not reachable; looking for %s in the Hugging Face cache only", hf_constants.ENDPOINT, model
        )
        offline = True
    try:
        folder = Path(snapshot_download(model, allow_patterns=_CONFIG_FILES, local_files_only=offline))
    except _LOAD_ERRORS as exc:
        raise ModelLoadError(_hub_failure(model, offline, exc)) from exc
    return model, folder, offline


def _load(loader, source: str, *, local_only: bool, model: str, **kwargs):
    try:
        return loader(source, local_files_only=local_only, **kwargs)
    except _LOAD_ERRORS as exc:
        if Path(source).is_dir():
            raise ModelLoadError(
                f"cannot load SSL model from directory {source}: {exc}; it must hold a transformers "
                f"config.json and weights (model.safetensors or pytorch_model.bin), as save_pretrained writes them"
            ) from exc
        raise ModelLoadError(_hub_failure(model, local_only, exc)) from exc


def _hub_failure(model: str, offline: bool, exc: BaseException) -> str:
    why = (
        "downloads are off (HF_HUB_OFFLINE, or the hub is unreachable)" if offline else "the download failed"
    )
    return (
        f"cannot load SSL model {model!r}: no directory of that name, not in the Hugging Face cache "
        f"({hf_constants.HF_HUB_CACHE}), and {why} ({type(exc).__name__}: {exc}). Download it where the hub is "
        f"reachable (AutoModel.from_pretrained(...).save_pretrained(DIR) with its preprocessor_config.json) and "
        f"pass the folder with --ssl-model DIR"
    )


def _hub_offline() -> bool:
    """HF's offline switches, read now (huggingface_hub reads them once, at import)."""
    env = (os.environ.get(name, "").strip().lower() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return hf_constants.HF_HUB_OFFLINE or any(value in _TRUE for value in env)


def _hub_reachable() -> bool:
    """A quick TCP connect to the hub, so a machine without network fails in seconds, not after retries."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy knows; let huggingface_hub try
    url = urlparse(hf_constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=_HUB_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _family_of(hf_config, model: str) -> EncoderFamily:
    if hf_config.model_type == "whisper":
        return EncoderFamily.WHISPER
    if hasattr(hf_config, "conv_stride") and hasattr(hf_config, "feat_extract_norm"):
        return EncoderFamily.WAV2VEC2
    raise ModelLoadError(
        f"{model} is a {hf_config.model_type!r} model; expected a speech encoder of the wav2vec2 family "
        f"(hubert, wav2vec2, wavlm, data2vec-audio) or whisper"
    )


def _check_layers(layers: tuple[int, ...], n_hidden_states: int, model: str) -> tuple[int, ...]:
    """`layers` as non-negative indices into hidden_states (0 = embeddings/CNN output)."""
    bad = [layer for layer in layers if not -n_hidden_states <= layer < n_hidden_states]
    if bad:
        raise ConfigError(
            f"layer index {', '.join(map(str, bad))} out of range for {model}, which has {n_hidden_states} hidden "
            f"states; valid: {-n_hidden_states}..{n_hidden_states - 1} (0 = embeddings, -1 = last layer)"
        )
    return tuple(layer % n_hidden_states for layer in layers)


def _wav2vec2_do_normalize(folder: Path, model: str) -> bool:
    """The feature extractor's do_normalize; HuBERT's behaviour (raw samples) when there is none."""
    if not (folder / "preprocessor_config.json").is_file():
        return False
    extractor = _load(AutoFeatureExtractor.from_pretrained, str(folder), local_only=True, model=model)
    rate = getattr(extractor, "sampling_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE:
        raise ConfigError(f"{model} expects {rate} Hz input; ser-dist feeds {SAMPLE_RATE} Hz")
    return bool(getattr(extractor, "do_normalize", False))


def _whisper_feature_extractor(folder: Path, hf_config) -> WhisperFeatureExtractor:
    if (folder / "preprocessor_config.json").is_file():
        extractor = _load(
            WhisperFeatureExtractor.from_pretrained, str(folder), local_only=True, model=str(folder)
        )
    else:
        extractor = WhisperFeatureExtractor(feature_size=hf_config.num_mel_bins)
    if extractor.sampling_rate != SAMPLE_RATE or extractor.feature_size != hf_config.num_mel_bins:
        raise ConfigError(
            f"{folder}: preprocessor expects {extractor.sampling_rate} Hz, {extractor.feature_size} mels; "
            f"the model wants {hf_config.num_mel_bins} mels and ser-dist feeds {SAMPLE_RATE} Hz"
        )
    return extractor
