"""Validation of agent identity: ids, countries and regions reach labels, so be strict."""

from __future__ import annotations

import re

import pycountry

AGENT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
REGION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,62}$")
CHECK_NAME_RE = re.compile(r"^[a-z0-9_.-]{1,100}$")

_COUNTRIES = frozenset(c.alpha_2 for c in pycountry.countries)


def valid_agent_id(value: str) -> bool:
    """Agent ids are lower-case label-safe tokens of at most 63 characters."""
    return bool(AGENT_ID_RE.match(value))


def valid_country(value: str) -> bool:
    """Countries are ISO-3166 alpha-2 codes in upper case."""
    return value in _COUNTRIES


def valid_region(value: str) -> bool:
    """Regions are optional; when given they are short and printable."""
    return value == "" or bool(REGION_RE.match(value))


def agent_id_problem(value: str) -> str | None:
    """Explain why an agent id is invalid, or None."""
    if valid_agent_id(value):
        return None
    return f"agent id {value!r} must match {AGENT_ID_RE.pattern}"


def country_problem(value: str) -> str | None:
    """Explain why a country code is invalid, or None."""
    if valid_country(value):
        return None
    return f"country {value!r} is not an ISO-3166 alpha-2 code (upper case, e.g. BR)"
