"""Arrow schemas of every table voxmill writes, and the job config model."""
from schemas.config import JobConfig
from schemas.tables import INDEX_SCHEMA, MANIFEST_SCHEMA, REJECTS_SCHEMA, SEGMENTED_SCHEMA

__all__ = ["JobConfig", "INDEX_SCHEMA", "MANIFEST_SCHEMA", "REJECTS_SCHEMA", "SEGMENTED_SCHEMA"]
