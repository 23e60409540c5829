"""Decode + resample: any container in, mono float32 at the rates the job needs out.

libsndfile (soundfile) decodes WAV/FLAC/OGG/MP3/SPH without FFmpeg's per-frame overhead;
PyAV (FFmpeg) takes everything else (Opus in MP4, M4A/AAC, odd WAV codecs).
Resampling uses soxr on the CPU and torchaudio when a CUDA device is present.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from typing import BinaryIO, Optional

import av
import numpy as np
import soundfile as sf
import soxr

from schemas.config import AudioConfig

ASR_RATE = 16000  # what Silero VAD and Whisper read
MIN_SECONDS = 0.1  # below this a file holds no word; say so instead of "no speech found"


class DecodeError(ValueError):
    """The file is not decodable audio; its message is the reject reason."""


@dataclass
class Waveform:
    samples: np.ndarray  # mono float32
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate if self.rate else 0.0


def decode(fh: BinaryIO, offset: float = 0.0, limit: Optional[float] = None) -> Waveform:
    """Decode a file (or `limit` seconds from `offset`, for calibration) to mono float32."""
    try:
        data, rate = _decode_sf(fh, offset, limit)
    except Exception:  # noqa: BLE001 - libsndfile refuses many valid files; FFmpeg may not
        fh.seek(0)
        data, rate = _decode_av(fh, offset, limit)
    if data.size == 0:
        raise DecodeError("no audio samples")
    if len(data) < MIN_SECONDS * rate:
        raise DecodeError(f"too short (under {MIN_SECONDS * 1000:.0f} ms of audio)")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise DecodeError("non-finite samples (NaN or Inf)")
    return Waveform(np.ascontiguousarray(mono), int(rate))


def _decode_sf(fh: BinaryIO, offset: float, limit: Optional[float]) -> tuple[np.ndarray, int]:
    with sf.SoundFile(fh) as audio:
        rate = audio.samplerate
        if offset:
            audio.seek(round(offset * rate))
        frames = round(limit * rate) if limit else -1
        return audio.read(frames, dtype="float32", always_2d=True), rate


def _decode_av(fh: BinaryIO, offset: float = 0.0, limit: Optional[float] = None) -> tuple[np.ndarray, int]:
    """FFmpeg decode of [offset, offset + limit) only: seeks, then streams frames, so memory
    follows the excerpt, not the file (a 10-hour Opus file is read piece by piece)."""
    try:
        with av.open(fh) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise DecodeError("no audio stream")
            rate = int(stream.codec_context.sample_rate)
            chunks = _frames_between(container, stream, offset, offset + limit if limit else None)
    except DecodeError:
        raise
    except Exception as err:  # noqa: BLE001 - every FFmpeg failure is a reject reason
        raise DecodeError(f"undecodable: {describe_error(err)}"[:300]) from err
    if not chunks:
        raise DecodeError("no audio samples")
    data = np.concatenate(chunks).astype(np.float32, copy=False)
    return (data[: round(limit * rate)] if limit else data), rate


def _frames_between(container, stream, start: float, end: Optional[float]) -> list[np.ndarray]:
    """Interleaved float32 [frames, channels] chunks covering start..end seconds."""
    rate, channels = stream.codec_context.sample_rate, stream.channels or 1
    if start:
        container.seek(int(start / stream.time_base), stream=stream)  # lands on a keyframe before
    resampler = av.AudioResampler(format="flt", layout=stream.layout.name)
    chunks, position = [], None
    try:
        for frame in container.decode(stream):
            at = frame.time if frame.time is not None else (position or 0.0)
            for out in resampler.resample(frame):
                samples = out.to_ndarray().reshape(-1, channels)
                skip = max(0, round((start - at) * rate))
                if skip < len(samples):
                    chunks.append(samples[skip:])
                at += len(samples) / rate
            position = at
            if end is not None and at >= end:
                break
    except av.error.FFmpegError as err:  # a cut-off or damaged stream: say where, keep nothing
        raise DecodeError(f"truncated or corrupt: decoding failed at {position or start:.2f} s "
                          f"({describe_error(err)})") from err
    return chunks


def describe_error(err: BaseException) -> str:
    """`Type: message` without FFmpeg's errno and file name, so one cause reads (and counts) the
    same in every reject row and in the summary's reject_reasons."""
    message = err.strerror if isinstance(err, av.error.FFmpegError) and err.strerror else err
    return f"{type(err).__name__}: {message}"


BATCH_SAMPLES = 1 << 25  # padded input samples per GPU resample call (128 MB of float32)


class Resampler:
    """Changes the rate of mono float32 audio: soxr on the CPU, torchaudio when asked or when
    this process sees a CUDA device. `many` resamples a list in batches: on a GPU one kernel
    launch serves many files, which is where its speed comes from."""

    def __init__(self, config: AudioConfig):
        self.backend = _pick_backend(config.resampler)

    @property
    def batches(self) -> bool:
        return self.backend == "torch"

    def __call__(self, wave: Waveform, rate: int) -> Waveform:
        return self.many([wave], rate)[0]

    def many(self, waves: list[Waveform], rate: int) -> list[Waveform]:
        out: list[Optional[Waveform]] = [w if w.rate == rate else None for w in waves]
        todo = [i for i, w in enumerate(out) if w is None]
        if self.backend != "torch":
            for i in todo:
                samples = soxr.resample(waves[i].samples, waves[i].rate, rate, quality="HQ")
                out[i] = Waveform(np.asarray(samples, dtype=np.float32), rate)
            return out  # type: ignore[return-value]
        for batch in _batches(todo, waves):
            for i, samples in zip(batch, _resample_torch([waves[i].samples for i in batch], waves[batch[0]].rate, rate)):
                out[i] = Waveform(samples, rate)
        return out  # type: ignore[return-value]


def _batches(indices: list[int], waves: list[Waveform]) -> list[list[int]]:
    """Same source rate, similar lengths (sorted, so padding stays small), bounded padded size."""
    batches: list[list[int]] = []
    order = sorted(indices, key=lambda i: (waves[i].rate, len(waves[i].samples)))
    for i in order:
        last = batches[-1] if batches else None
        fits = last and waves[last[0]].rate == waves[i].rate and \
            (len(last) + 1) * len(waves[i].samples) <= BATCH_SAMPLES
        if fits:
            last.append(i)
        else:
            batches.append([i])
    return batches


def _pick_backend(choice: str) -> str:
    if choice != "auto":
        return choice
    return "torch" if _cuda_available() else "soxr"


@lru_cache(maxsize=1)
def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _resample_torch(arrays: list[np.ndarray], src: int, dst: int) -> list[np.ndarray]:
    """One padded [batch, time] resample; each row is cut back to its own length. Zero padding
    changes nothing: torchaudio pads every signal with zeros past its end anyway."""
    import torch
    import torchaudio.functional as F

    device = "cuda" if _cuda_available() else "cpu"
    longest = max(len(a) for a in arrays)
    batch = torch.zeros((len(arrays), longest), dtype=torch.float32)
    for row, a in enumerate(arrays):
        batch[row, : len(a)] = torch.from_numpy(a)
    resampled = F.resample(batch.to(device), src, dst).cpu().numpy()
    return [np.ascontiguousarray(resampled[row, : resampled_length(len(a), src, dst)]) for row, a in enumerate(arrays)]


def resampled_length(samples: int, src: int, dst: int) -> int:
    """samples x dst / src rounded half up: what soxr returns. torchaudio returns the ceiling, one
    sample more for most lengths; cutting to soxr's length keeps a sample's length (and its key's
    bytes) the same whichever backend a machine picks."""
    return (2 * samples * dst + src) // (2 * src)


def peak_normalize(samples: np.ndarray, peak: float) -> np.ndarray:
    top = float(np.abs(samples).max(initial=0.0))
    return samples if top == 0.0 else (samples * (peak / top)).astype(np.float32)


def encode(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    """16-bit FLAC or WAV bytes, the payload of a shard sample."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1.0, 1.0), rate, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()
