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
    ]
)

REJECTS_SCHEMA = pa.schema(
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
    ]
)
