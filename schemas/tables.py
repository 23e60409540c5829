"""Arrow schemas of the tables voxmill writes; readers and writers both use these."""
import pyarrow as pa

from schemas.metrics import METRICS, Registry

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # stable: hash of uri + sanitised stem
        pa.field("uri", pa.string(), nullable=False),
        pa.field("bytes", pa.int64()),
        pa.field("container", pa.string()),
        pa.field("codec", pa.string()),
        pa.field("sample_rate", pa.int32()),
        pa.field("channels", pa.int16()),
        pa.field("duration", pa.float64()),  # seconds, from the header
        pa.field("error", pa.string()),  # why the header could not be read, else null
    ]
)

# The input as listed, before any header is read: OUTPUT/_ledger/discovery-*/listing.parquet, in path order
# (pipelines/stages/listing.py); `error` says why an entry cannot be read, `folder` keeps it whatever its name.
LISTING_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),  # protocol-less, as the input's filesystem takes it
        pa.field("size", pa.int64()),
        pa.field("error", pa.string()),
        pa.field("folder", pa.bool_()),
    ]
)

# Work units (pipelines/state/units.py), appended per run: OUTPUT/_ledger/layout-NNNNNN.parquet holds one
# row per unit (the commit marker, written last) and layout-NNNNNN.files.parquet one row per file or excerpt.
UNIT_SCHEMA = pa.schema(
    [
        pa.field("unit", pa.int32(), nullable=False),
        pa.field("digest", pa.string(), nullable=False),
        pa.field("seconds", pa.float64()),
        pa.field("files", pa.int32()),
    ]
)
UNIT_FILE_SCHEMA = pa.schema(
    [
        pa.field("unit", pa.int32(), nullable=False),
        pa.field("id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("duration", pa.float64()),
        pa.field("error", pa.string()),
        pa.field("offset", pa.float64()),
        pa.field("limit", pa.float64()),
        pa.field("context", pa.float64()),
        pa.field("length", pa.float64()),
    ]
)

# The columns of a segment itself; the score columns (ASR and quality) follow, from schemas/metrics.py.
SEGMENT_FIELDS = (
    pa.field("key", pa.string(), nullable=False),
    pa.field("shard", pa.string(), nullable=False),  # path relative to the output root
    pa.field("unit", pa.int32()),
    pa.field("source_id", pa.string()),
    pa.field("source_uri", pa.string()),
    pa.field("start", pa.float64()),
    pa.field("end", pa.float64()),
    pa.field("duration", pa.float64()),
    pa.field("sample_rate", pa.int32()),
    pa.field("text", pa.string()),
)

# Word timestamps (asr.word_timestamps): seconds from the start of the stored sample, Whisper's probability
WORD_TYPE = pa.struct([pa.field("word", pa.string()), pa.field("start", pa.float32()),
                       pa.field("end", pa.float32()), pa.field("probability", pa.float32())])

# Columns added after outputs were made: after the metrics, so older outputs' columns keep their places.
# `reference`: the corpus's own transcript of the segment (a .txt/.lab beside the audio, or the user's
# manifest; see pipelines/stages/references.py), null without one. `words`: null unless asked for.
LATER_FIELDS = (
    pa.field("reference", pa.string()),
    pa.field("words", pa.list_(WORD_TYPE)),
)

_REJECT_FIELDS = (
    [
        pa.field("source_id", pa.string()),
        pa.field("source_uri", pa.string()),
        pa.field("unit", pa.int32()),
        pa.field("key", pa.string()),  # null when the whole input was rejected
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("start", pa.float64()),
        pa.field("end", pa.float64()),
        pa.field("duration", pa.float64()),
        # a quality filter's drop: which metric, its value and the threshold crossed; else null
        pa.field("metric", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("threshold", pa.float64()),
    ]
)


def index_schema(registry: Registry = METRICS) -> pa.Schema:
    """One row per kept sample: the segment's columns, then one column per declared metric (in
    declaration order; null when quality.enabled is false or not measurable), then `LATER_FIELDS`."""
    return pa.schema([*SEGMENT_FIELDS, *(m.field for m in registry), *LATER_FIELDS])


def rejects_schema(index: pa.Schema) -> pa.Schema:
    """The rejects columns, then `shard` and every other column of `index`, nullable."""
    return pa.schema(
        _REJECT_FIELDS
        + [pa.field("shard", pa.string())]
        + [f.with_nullable(True) for f in index
           if f.name not in {g.name for g in _REJECT_FIELDS} | {"shard"}]
    )


# One row per kept sample. A segment dropped after ASR (stage "asr" empty transcript, or stage "quality") also carries every
# column of the index row it would have had (text, language, ASR and quality scores, audio_hash, ...)
# and `shard`: the `rejected/shard-*.tar` holding its KEY.flac + KEY.json (null when
# shards.keep_rejected_audio is off). All of them are null for a file-level reject (discover, decode,
# vad, prepare) and for a segment whose scoring failed before ASR. `voxmill refilter` reads them back.
INDEX_SCHEMA = index_schema(METRICS)
REJECTS_SCHEMA = rejects_schema(INDEX_SCHEMA)

SEGMENTED_SCHEMA = pa.schema(
    [
        # one row per segment of a unit cut but not yet scored: OUTPUT/_ledger/asr/unit-.../segmented.arrow,
        # kept until the unit commits (pipelines/state/journal.py); its rejects and totals ride in the schema metadata
        pa.field("key", pa.string(), nullable=False),
        pa.field("source_id", pa.string()),
        pa.field("source_uri", pa.string()),
        pa.field("start", pa.float64()),
        pa.field("end", pa.float64()),
        pa.field("audio", pa.binary()),  # the encoded output audio, as the shard will store it
        pa.field("scores", pa.string()),  # JSON of the segment's quality scores
        pa.field("asr_audio", pa.binary()),  # the 16 kHz float32 samples the ASR actor is given
    ]
)

LEDGER_SCHEMA = pa.schema(
    [
        # one row per finished unit: OUTPUT/_ledger/units.parquet, the compacted unit records
        # (pipelines/state/ledger.py); `status` sums the typed totals, the rest reads `record`
        pa.field("unit", pa.int64(), nullable=False),
        pa.field("digest", pa.string()),
        pa.field("input_seconds", pa.float64()),
        pa.field("output_seconds", pa.float64()),
        pa.field("samples", pa.int64()),
        pa.field("rejects", pa.int64()),
        pa.field("finished_at", pa.string()),
        pa.field("record", pa.string(), nullable=False),  # the unit's record as JSON
    ]
)
