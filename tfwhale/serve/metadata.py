"""Photo metadata (serve): when, where, which side and by whom, read from EXIF, typed, or from a CSV.

One PhotoMeta per photo; every way in (EXIF at upload, the photo page's form, a bulk-import CSV, the
records' train.csv) goes through check_meta, so a bad value is refused the same way everywhere, naming
its field. The export writes the same fields as train.csv columns (EXPORT_COLUMNS).
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, fields, replace
from datetime import datetime

SIDES = ("unknown", "left", "right", "front", "back")
# train.csv columns of the export (and accepted in a bulk-import CSV), in PhotoMeta's field order
EXPORT_COLUMNS = ("date", "latitude", "longitude", "place", "side", "photographer", "notes")
MAX_TEXT = {"place": 200, "photographer": 100, "notes": 2000}

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATE_TIME, _DATE_TIME_ORIGINAL = 306, 36867
_DATE_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M:%S", "%Y-%m-%dT%H:%M",
                 "%Y-%m-%d %H:%M", "%Y-%m-%d")  # fmt: skip
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class MetaError(ValueError):
    """A metadata value the catalogue does not accept; the message names the field."""


@dataclass(frozen=True)
class PhotoMeta:
    date: str = ""  # 'YYYY-MM-DDTHH:MM:SS' (the camera's local time, as EXIF holds it) or 'YYYY-MM-DD'
    latitude: float | None = None  # decimal degrees, north positive
    longitude: float | None = None  # decimal degrees, east positive
    place: str = ""
    side: str = "unknown"  # one of SIDES: which side of the animal the photo shows
    photographer: str = ""
    notes: str = ""

    def cells(self) -> list[str]:
        """The export's train.csv cells, in EXPORT_COLUMNS order."""
        return [_cell(getattr(self, name)) for name in EXPORT_COLUMNS]

    def is_empty(self) -> bool:
        return self == PhotoMeta()

    def filled_from(self, other: PhotoMeta) -> PhotoMeta:
        """This record, with the fields it leaves empty taken from `other` (e.g. EXIF under typed values)."""
        empty = PhotoMeta()
        changes = {
            f.name: getattr(other, f.name)
            for f in fields(self)
            if getattr(self, f.name) == getattr(empty, f.name)
        }
        return replace(self, **changes)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def check_meta(values: dict[str, object], where: str = "") -> PhotoMeta:
    """A PhotoMeta from text or numbers as a form or a CSV gives them ('' = not given); MetaError names
    the field (prefixed with `where`, e.g. a CSV row) of the first bad value. Unknown keys are errors."""
    prefix = f"{where}: " if where else ""
    unknown = sorted(set(values) - set(EXPORT_COLUMNS))
    if unknown:
        raise MetaError(f"{prefix}unknown metadata field(s) {unknown}; known: {list(EXPORT_COLUMNS)}")
    text = {key: "" if value is None else str(value).strip() for key, value in values.items()}
    try:
        return PhotoMeta(
            date=parse_date(text.get("date", "")),
            latitude=_degrees(text.get("latitude", ""), 90.0, "latitude"),
            longitude=_degrees(text.get("longitude", ""), 180.0, "longitude"),
            place=_text(text.get("place", ""), "place"),
            side=_side(text.get("side", "")),
            photographer=_text(text.get("photographer", ""), "photographer"),
            notes=_text(text.get("notes", ""), "notes"),
        )
    except MetaError as err:
        raise MetaError(f"{prefix}{err}") from None


def parse_date(text: str) -> str:
    """'' or an ISO date/time ('YYYY-MM-DD', 'YYYY-MM-DD HH:MM[:SS]', EXIF's 'YYYY:MM:DD HH:MM:SS')."""
    if not text:
        return ""
    for fmt in _DATE_FORMATS:
        try:
            parsed = datetime.strptime(text, fmt)
        except ValueError:
            continue
        return parsed.strftime("%Y-%m-%d") if fmt == "%Y-%m-%d" else parsed.isoformat(timespec="seconds")
    raise MetaError(f"date: {text[:40]!r} is not a date (YYYY-MM-DD or YYYY-MM-DD HH:MM:SS)")


def _degrees(text: str, limit: float, name: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise MetaError(f"{name}: {text[:40]!r} is not a number (decimal degrees)") from None
    if not math.isfinite(value) or abs(value) > limit:
        raise MetaError(f"{name}: {text[:40]} is outside -{limit:g}..{limit:g} degrees")
    return round(value, 6)


def _side(text: str) -> str:
    side = text.lower() or "unknown"
    if side not in SIDES:
        raise MetaError(f"side: {text[:40]!r} is not one of {', '.join(SIDES)}")
    return side


def _text(text: str, name: str) -> str:
    """One line of text: train.csv rows stay one line each (the builder's row numbers are lines)."""
    if len(text) > MAX_TEXT[name]:
        raise MetaError(f"{name}: longer than {MAX_TEXT[name]} characters")
    if _CONTROL.search(text):
        raise MetaError(f"{name}: holds control characters (tabs, line breaks)")
    return text


def read_exif(data: bytes) -> PhotoMeta:
    """Date (DateTimeOriginal, else DateTime) and GPS position from a photo's EXIF; empty fields when the
    photo has none or they are unreadable (metadata never stops an upload)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            exif = image.getexif()
            taken = exif.get_ifd(_EXIF_IFD).get(_DATE_TIME_ORIGINAL) or exif.get(_DATE_TIME) or ""
            gps = exif.get_ifd(_GPS_IFD)
    except Exception:  # not an image, or a broken EXIF block: the upload says the rest
        return PhotoMeta()
    try:
        date = parse_date(str(taken).strip("\x00 "))
    except MetaError:
        date = ""
    latitude = _gps_degrees(gps.get(2), gps.get(1), 90.0)
    longitude = _gps_degrees(gps.get(4), gps.get(3), 180.0)
    if latitude is None or longitude is None:
        latitude = longitude = None
    return PhotoMeta(date=date, latitude=latitude, longitude=longitude)


def _gps_degrees(dms, ref, limit: float) -> float | None:
    """EXIF's (degrees, minutes, seconds) rationals and 'N'/'S' or 'E'/'W' as signed decimal degrees."""
    try:
        degrees, minutes, seconds = (float(part) for part in dms)
        value = degrees + minutes / 60 + seconds / 3600
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not math.isfinite(value) or value > limit:
        return None
    reference = ref.decode(errors="ignore") if isinstance(ref, bytes) else str(ref or "")
    return round(-value if reference.strip("\x00 ").upper() in ("S", "W") else value, 6)
