"""Reference transcripts a corpus ships with, and each segment's share of its file's reference.

Where they come from (`discover:` settings, looked up by the prep task for its unit's files):
- a file beside the audio with its stem and one of `reference_extensions` (LibriTTS
  `X.normalized.txt`, LibriSpeech-style `X.txt`, MFA `X.lab`): on an object store one listing per
  folder (the filesystem caches it), on a local disk a stat per candidate, then one concurrent read
  of the files found;
- a manifest of the user's (`reference_manifest`: JSON lines, CSV or Parquet; NeMo's `manifest.json`
  works as is), its `reference_path_column` naming the audio (relative to the manifest's folder, as
  NeMo resolves it, or absolute) and `reference_text_column` the text; it wins over a file beside the
  audio.

A reference describes a whole file, and VAD may cut a file into several segments. A file of one
segment gets the whole reference. A file of several gets it split by aligning it to the ASR words:
the reference words (normalised as for WER) are aligned to the segments' transcripts joined in time
order by edit distance; each reference word goes to the segment of the ASR word it matched or
replaced, and a word the ASR missed goes with the word before it (the first segment's, at the start).
So a segment's WER counts its own substitutions and insertions, and the words missed at its end. A
file cut into excerpts (over 1.5x `engine.excerpt_minutes`) has its segments in several units, so
its reference is not used, and neither is one of more than `MAX_ALIGN_CELLS` word pairs.
"""
from __future__ import annotations

import io
import logging
import os
from collections import defaultdict
from typing import Optional, Sequence

import pyarrow as pa

from pipelines.io import storage
from pipelines.metrics.text import normalise_text
from pipelines.records import SourceFile
from schemas.config import DiscoverConfig

log = logging.getLogger("voxmill")

MAX_ALIGN_CELLS = 4_000_000  # reference words x ASR words of one file: ~a second of alignment at most


class ReferenceError(ValueError):
    """The reference manifest cannot be read as configured; the message says why."""


def read_manifest(config: DiscoverConfig) -> dict[str, str]:
    """{audio URL: reference text} from `discover.reference_manifest` ({} when unset)."""
    url = config.reference_manifest
    if not url:
        return {}
    fs, path = storage.filesystem(url)
    try:
        with fs.open(path, "rb") as fh:
            table = _read_table(io.BytesIO(fh.read()), path)
    except FileNotFoundError as err:
        raise ReferenceError(f"discover.reference_manifest {storage.redact(url)}: not found") from err
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        raise ReferenceError(f"discover.reference_manifest {storage.redact(url)}: not JSON lines, CSV or "
                             f"Parquet ({err})") from err
    columns = (config.reference_path_column, config.reference_text_column)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ReferenceError(f"discover.reference_manifest {storage.redact(url)} has no column {missing} "
                             f"(it has {table.column_names}): set discover.reference_path_column / "
                             "reference_text_column")
    folder = path.rsplit("/", 1)[0] if "/" in path else ""
    found = {}
    for audio, text in zip(*(table.column(c).to_pylist() for c in columns)):
        cleaned = _clean(text)
        if audio and cleaned is not None:
            found[_audio_url(fs, folder, str(audio))] = cleaned
    return found


def _read_table(data: io.BytesIO, path: str) -> pa.Table:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(data)
    if path.endswith((".csv", ".tsv")):
        import pyarrow.csv as csv

        delimiter = "\t" if path.endswith(".tsv") else ","
        return csv.read_csv(data, parse_options=csv.ParseOptions(delimiter=delimiter))
    import pyarrow.json as pj

    return pj.read_json(data)


def _audio_url(fs, folder: str, audio: str) -> str:
    """The URL discovery gives the audio a manifest row names (relative to the manifest's folder)."""
    if "://" in audio:
        audio_fs, audio_path = storage.filesystem(audio)
        return storage.to_url(audio_fs, audio_path)
    if storage.is_local(fs):
        return os.path.normpath(os.path.join(folder, audio))
    return storage.to_url(fs, audio if audio.startswith("/") else f"{folder}/{audio}")


def _clean(text: object) -> Optional[str]:
    """One line of text (a .lab or .txt may wrap); None when there is no text."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    joined = " ".join(str(text).split())
    return joined or None


class References:
    """The reference transcript of each whole file of a unit, by source id."""

    def __init__(self, config: DiscoverConfig):
        self.extensions = tuple(e.lstrip(".") for e in config.reference_extensions)
        self.config = config
        self._manifest: Optional[dict[str, str]] = None

    @property
    def manifest(self) -> dict[str, str]:
        if self._manifest is None:  # once per worker process (the Preparer lives as long)
            self._manifest = read_manifest(self.config)
        return self._manifest

    def __call__(self, files: Sequence[SourceFile]) -> dict[str, str]:
        whole = [f for f in files if not f.error and not f.context]  # an excerpt's file spans units
        found = {f.id: self.manifest[f.uri] for f in whole if f.uri in self.manifest}
        if self.extensions:
            found.update(self._beside([f for f in whole if f.id not in found]))
        return found

    def _beside(self, files: list[SourceFile]) -> dict[str, str]:
        """The references found beside the files: one listing per folder, one read of those found."""
        folders: dict[str, list[SourceFile]] = defaultdict(list)
        for f in files:
            folders[f.uri.rsplit("/", 1)[0]].append(f)
        found: dict[str, str] = {}
        for folder, group in folders.items():
            fs, path = storage.filesystem(folder)
            try:
                present = _present(fs, path.rstrip("/"), group, self.extensions)
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            wanted = {}
            for f in group:
                stem = f.uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]
                name = next((f"{stem}.{ext}" for ext in self.extensions if f"{stem}.{ext}" in present), None)
                if name:
                    wanted[f.id] = f"{path.rstrip('/')}/{name}"
            if not wanted:
                continue
            try:
                texts = fs.cat(list(wanted.values()), on_error="omit")
            except OSError as err:  # a reference that cannot be read leaves the segment without one
                log.warning("references in %s not read: %s", storage.redact(folder), err)
                continue
            for source_id, name in wanted.items():
                text = _clean(texts.get(name))
                if text is not None:
                    found[source_id] = text
        return found


def _present(fs, folder: str, files: list[SourceFile], extensions: tuple[str, ...]) -> set[str]:
    """Which candidate names exist in `folder`: on a local disk a stat each (a folder of a million
    files is not listed per unit), on an object store one listing (cached by the filesystem, so
    a folder is listed once per worker, not once per file)."""
    if storage.is_local(fs):
        stems = {f.uri.rsplit("/", 1)[-1].rsplit(".", 1)[0] for f in files}
        return {f"{stem}.{ext}" for stem in stems for ext in extensions if os.path.isfile(f"{folder}/{stem}.{ext}")}
    return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)}


def segment_references(references: dict[str, str], segments: Sequence[tuple[str, str]]) -> list[Optional[str]]:
    """Each segment's reference, from (source id, ASR text) in the unit's segment order (a file's
    segments in time order): the file's whole reference for a file of one segment, its share by
    alignment for a file of several (see the module docstring); None without one."""
    out: list[Optional[str]] = [None] * len(segments)
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, (source_id, _) in enumerate(segments):
        if source_id in references:
            by_source[source_id].append(i)
    for source_id, indices in by_source.items():
        shares = split_reference(references[source_id], [segments[i][1] for i in indices])
        for i, share in zip(indices, shares):
            out[i] = share
    return out


def split_reference(reference: str, texts: Sequence[str]) -> list[Optional[str]]:
    """`reference` cut into one share per transcript in `texts` (a file's segments, in order)."""
    if len(texts) == 1:
        return [reference]
    words = reference.split()
    tokens, owner = _tokens(words)
    hyp, segment = _tokens(texts)
    if not tokens or not hyp or len(tokens) * len(hyp) > MAX_ALIGN_CELLS:
        return [None] * len(texts)
    import jiwer

    place: list[Optional[int]] = [None] * len(tokens)  # each reference token's segment
    for chunk in jiwer.process_words(" ".join(tokens), " ".join(hyp)).alignments[0]:
        if chunk.type in ("equal", "substitute"):
            for k in range(chunk.ref_start_idx, chunk.ref_end_idx):
                place[k] = segment[chunk.hyp_start_idx + k - chunk.ref_start_idx]
    current = next((p for p in place if p is not None), 0)
    shares: list[list[str]] = [[] for _ in texts]
    token = 0
    for w, word in enumerate(words):
        while token < len(tokens) and owner[token] < w:
            token += 1
        if token < len(tokens) and owner[token] == w and place[token] is not None:
            current = place[token]  # missed words (and bare punctuation) follow the word before them
        shares[current].append(word)
    return [" ".join(share) for share in shares]


def _tokens(texts: Sequence[str]) -> tuple[list[str], list[int]]:
    """The normalised words of `texts` and, for each, the index of the text it came from."""
    tokens, owner = [], []
    for i, text in enumerate(texts):
        for token in normalise_text(text).split():
            tokens.append(token)
            owner.append(i)
    return tokens, owner
