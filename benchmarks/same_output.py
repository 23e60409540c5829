"""Are two voxmill outputs the same dataset? Keys, every shard member's bytes (training and rejected
shards), and every index and rejects row, compared exactly; tar headers' write times are ignored.

Used to show that a change of code layout changed no output (issue 18):

    python benchmarks/same_output.py OUT_BEFORE OUT_AFTER
"""
from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.io import tables  # noqa: E402


def members(output: Path, folder: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for shard in sorted((output / folder).glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                found[f"{shard.name}/{member.name}"] = tar.extractfile(member).read()
    return found


def rows(output: Path, folder: str) -> list[dict]:
    """Every row a reader reads (compacted files and the parts they do not cover, `tables.read_parts`)."""
    if not (output / folder).exists():
        return []
    table = tables.read_parts(str(output), folder)
    return sorted(table.to_pylist(), key=lambda r: (r.get("unit") or 0, str(r.get("key")), str(r.get("source_uri"))))


def differences(before: Path, after: Path) -> list[str]:
    found = []
    for folder in ("shards", "rejected"):
        a, b = members(before, folder), members(after, folder)
        if a.keys() != b.keys():
            found.append(f"{folder}: members differ: {sorted(a.keys() ^ b.keys())[:5]}")
        found += [f"{folder}: {name} bytes differ" for name in sorted(a.keys() & b.keys()) if a[name] != b[name]][:5]
    for folder in ("index", "rejects"):
        a, b = rows(before, folder), rows(after, folder)
        if a != b:
            changed = [(x, y) for x, y in zip(a, b) if x != y][:2]
            found.append(f"{folder}: {len(a)} vs {len(b)} rows; first differences: {changed}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    found = differences(args.before, args.after)
    counts = {folder: len(members(args.after, folder)) for folder in ("shards", "rejected")}
    print(f"{len(rows(args.after, 'index'))} index rows, {len(rows(args.after, 'rejects'))} rejects rows, "
          f"{counts['shards']} shard members, {counts['rejected']} rejected members: "
          + ("identical" if not found else "DIFFERENT"))
    for line in found:
        print(" ", line)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
