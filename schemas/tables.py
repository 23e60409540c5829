"""Arrow schemas of the tables voxmill writes; readers and writers both use these."""
import pyarrow as pa

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

INDEX_SCHEMA = pa.schema(
    [
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
        pa.field("language", pa.string()),
        pa.field("language_prob", pa.float32()),
        pa.field("avg_logprob", pa.float32()),
        pa.field("no_speech_prob", pa.float32()),
        # quality scores (pipelines/metrics/quality.py); null when quality.enabled is false or not measurable
        pa.field("dnsmos_sig", pa.float32()),  # DNSMOS P.835, 1-5
        pa.field("dnsmos_bak", pa.float32()),
        pa.field("dnsmos_ovrl", pa.float32()),
        pa.field("snr_db", pa.float32()),  # blind estimate
        pa.field("clipping", pa.float32()),  # share of samples on the peak plateau
        pa.field("loudness_lufs", pa.float32()),  # BS.1770 integrated loudness
        pa.field("chars_per_second", pa.float32()),  # letters+digits of the normalised transcript
        pa.field("audio_hash", pa.string()),  # blake2b-128 hex of the stored KEY.flac/KEY.wav bytes
        pa.field("near_duplicate_of", pa.string()),  # key of an earlier sample with the same text and length
    ]
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
# A segment dropped after ASR (stage "asr" empty transcript, or stage "quality") also carries every
# column of the index row it would have had (text, language, ASR and quality scores, audio_hash, ...)
# and `shard`: the `rejected/shard-*.tar` holding its KEY.flac + KEY.json (null when
# shards.keep_rejected_audio is off). All of them are null for a file-level reject (discover, decode,
# vad, prepare) and for a segment whose scoring failed before ASR. `voxmill refilter` reads them back.
REJECTS_SCHEMA = pa.schema(
    _REJECT_FIELDS
    + [pa.field("shard", pa.string())]
    + [f.with_nullable(True) for f in INDEX_SCHEMA
       if f.name not in {g.name for g in _REJECT_FIELDS} | {"shard"}]
)

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
