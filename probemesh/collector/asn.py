"""Optional IP -> autonomous system lookups for the diagnosis (``--asn-db``).

Two file formats, picked by the file's name:

- ``*.mmdb``: a MaxMind ASN database (GeoLite2-ASN or compatible), read with
  ``maxminddb``; the number is the record's ``autonomous_system_number``.
- anything else: an ip2asn TSV (iptoasn.com), one range per line:
  ``range_start<TAB>range_end<TAB>AS_number<TAB>country<TAB>description``;
  AS number 0 means "not routed" and is treated as unknown.

Both load once at start-up; a missing or malformed file is a configuration
error naming the file and line.
"""

from __future__ import annotations

import bisect
import ipaddress
from pathlib import Path
from typing import Protocol

import maxminddb

from probemesh.errors import ConfigError


class AsnLookup(Protocol):
    """Anything that maps an address to its AS number."""

    def asn(self, address: str) -> int | None: ...


class NoAsnDatabase:
    """The default: no ASN is ever known."""

    def asn(self, address: str) -> int | None:
        return None


class Ip2AsnTable:
    """ip2asn ranges, searched by bisection."""

    def __init__(self, ranges: list[tuple[int, int, int, int]]) -> None:
        # (version, start, end, asn), sorted by (version, start)
        self._ranges = sorted(ranges)
        self._keys = [(v, start) for v, start, _, _ in self._ranges]

    @classmethod
    def load(cls, path: Path) -> Ip2AsnTable:
        ranges: list[tuple[int, int, int, int]] = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--asn-db {path}: cannot read: {exc}") from None
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            try:
                start = ipaddress.ip_address(fields[0].strip())
                end = ipaddress.ip_address(fields[1].strip())
                asn = int(fields[2])
            except (IndexError, ValueError):
                raise ConfigError(
                    f"--asn-db {path}:{number}: expected range_start<TAB>range_end<TAB>AS_number"
                ) from None
            if start.version != end.version or int(end) < int(start) or asn < 0:
                raise ConfigError(f"--asn-db {path}:{number}: invalid range or AS number")
            if asn:
                ranges.append((start.version, int(start), int(end), asn))
        return cls(ranges)

    def asn(self, address: str) -> int | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        i = bisect.bisect_right(self._keys, (ip.version, int(ip))) - 1
        if i < 0:
            return None
        version, _, end, asn = self._ranges[i]
        return asn if version == ip.version and int(ip) <= end else None


class MaxMindAsn:
    """A MaxMind ASN .mmdb file."""

    def __init__(self, path: Path) -> None:
        try:
            self._reader = maxminddb.open_database(str(path))
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise ConfigError(f"--asn-db {path}: not a readable MaxMind database: {exc}") from None

    def asn(self, address: str) -> int | None:
        try:
            record = self._reader.get(address)
        except ValueError:
            return None
        number = record.get("autonomous_system_number") if isinstance(record, dict) else None
        return number if isinstance(number, int) and number > 0 else None


def load_asn_db(path: Path | None) -> AsnLookup:
    """The lookup for --asn-db (or none)."""
    if path is None:
        return NoAsnDatabase()
    if path.suffix == ".mmdb":
        return MaxMindAsn(path)
    return Ip2AsnTable.load(path)
