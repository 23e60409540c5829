"""Speaker embeddings: the GE2E encoder of Resemblyzer (Apache-2.0), whose trained weights ship inside
its PyPI wheel, so no model hub is needed.

Only the weights file is used. The 40-band mel front end and the 3-layer LSTM are built here with
torch/torchaudio, so Resemblyzer's own dependencies (librosa, numba, a compiled webrtcvad) are not
installed: `scripts/setup.sh` installs the wheel with `--no-deps`.
"""
from __future__ import annotations

import importlib.util
from functools import cached_property
from pathlib import Path
from typing import Optional

import numpy as np

RATE = 16000
FRAME_HOP = 160  # 10 ms mel frames
WINDOW_FRAMES = 160  # the 1.6 s partial utterance GE2E was trained on
MEL_BANDS = 40
HIDDEN = 256
TARGET_DBFS = -30.0  # Resemblyzer raises quieter input to this level before the mel (never lowers it)
EMBEDDING_SIZE = 256


def weights_path() -> Path:
    """The trained weights inside the installed `resemblyzer` wheel (the package is not imported)."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("speaker embeddings need the Resemblyzer weights: pip install --no-deps resemblyzer==0.1.4")
    return Path(list(spec.submodule_search_locations)[0]) / "pretrained.pt"


class SpeakerEncoder:
    """Unit-length 256-d speaker embeddings of 16 kHz float32 audio, one per 1.6 s window."""

    def __init__(self, device: str = "auto", weights: Optional[Path] = None):
        self.device = resolve_device(device)
        self.weights = weights

    @cached_property
    def _model(self):
        import torch

        if self.device == "cpu":
            torch.set_num_threads(1)  # a prep task holds one CPU; more threads only oversubscribe it
        model = _Ge2e()
        state = torch.load(self.weights or weights_path(), map_location="cpu", weights_only=True)["model_state"]
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("similarity")})
        return model.eval().to(self.device)

    @cached_property
    def _mel(self):
        import torchaudio

        # librosa.feature.melspectrogram's defaults, which the encoder was trained on: Slaney mel
        # scale and area normalisation, power spectrum, centred frames padded with zeros
        return torchaudio.transforms.MelSpectrogram(
            sample_rate=RATE, n_fft=400, hop_length=FRAME_HOP, n_mels=MEL_BANDS, power=2.0,
            norm="slaney", mel_scale="slaney", center=True, pad_mode="constant").to(self.device)

    def frames(self, audio: np.ndarray):
        """(frames, 40) mel power spectrogram of the level-raised audio, as a torch tensor."""
        import torch

        audio = np.asarray(audio, dtype=np.float32)
        power = float(np.mean(audio.astype(np.float64) ** 2)) if len(audio) else 0.0
        if power > 0:
            change = TARGET_DBFS - 10 * np.log10(power)
            if change > 0:
                audio = audio * np.float32(10 ** (change / 20))
        with torch.inference_mode():
            return self._mel(torch.from_numpy(audio).to(self.device)).T

    def windows(self, audio: np.ndarray, hop_seconds: float) -> tuple[np.ndarray, np.ndarray]:
        """(starts in seconds, (n, 256) embeddings) of 1.6 s windows every `hop_seconds`; audio
        shorter than a window is one embedding of all of it."""
        import torch

        mel = self.frames(audio)
        starts = window_starts(len(mel), hop_seconds)
        batch = mel[None] if len(mel) <= WINDOW_FRAMES else torch.stack([mel[s: s + WINDOW_FRAMES] for s in starts])
        with torch.inference_mode():
            embeddings = self._model(batch).cpu().numpy()
        return np.asarray(starts, dtype=np.float64) * FRAME_HOP / RATE, embeddings

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """One embedding of a whole utterance: the normalised mean of its windows (half overlapping)."""
        _, embeddings = self.windows(audio, hop_seconds=WINDOW_FRAMES * FRAME_HOP / RATE / 2)
        return unit(embeddings.mean(axis=0))


def window_starts(frames: int, hop_seconds: float) -> list[int]:
    """First mel frame of each 1.6 s window `hop_seconds` apart over `frames` frames; the tail gets a
    window of its own, and audio shorter than a window is one window of all of it. The plan counts
    windows with it too (`stages.speakers.speaker_windows`): the stage's cost follows them."""
    if frames <= WINDOW_FRAMES:
        return [0]
    hop = max(1, round(hop_seconds * RATE / FRAME_HOP))
    starts = list(range(0, frames - WINDOW_FRAMES + 1, hop))
    if starts[-1] + WINDOW_FRAMES < frames:
        starts.append(frames - WINDOW_FRAMES)
    return starts


def mel_frames(samples: int) -> int:
    """Frames of `SpeakerEncoder.frames` for this many samples (centred frames)."""
    return samples // FRAME_HOP + 1


def resolve_device(device: str) -> str:
    """auto: the GPU when this worker sees one (a prep task given a GPU share), else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return (vector / norm).astype(np.float32) if norm else vector.astype(np.float32)


def _Ge2e():
    """The GE2E speaker encoder: a 3-layer LSTM over mel frames, its last hidden state projected,
    ReLU, L2-normalised (Wan et al. 2018, as Resemblyzer trained it)."""
    import torch
    from torch import nn

    class Ge2e(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(MEL_BANDS, HIDDEN, 3, batch_first=True)
            self.linear = nn.Linear(HIDDEN, EMBEDDING_SIZE)

        def forward(self, mels: "torch.Tensor") -> "torch.Tensor":
            _, (hidden, _) = self.lstm(mels)
            embeds = torch.relu(self.linear(hidden[-1]))
            return embeds / torch.linalg.norm(embeds, dim=1, keepdim=True).clamp_min(1e-5)

    return Ge2e()
