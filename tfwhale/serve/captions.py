"""One line that names a catalogue photo under its picture (serve): file name, then side, date and place
where they are known. The only place that decides what a caption shows."""

from __future__ import annotations

from tfwhale.serve import metadata_store
from tfwhale.serve.catalogue import Catalogue
from tfwhale.serve.store import Photo

CAPTION_FIELDS = ("side", "date", "place")  # read from the photo's metadata record, when set
MAX_NAME = 40


def photo_caption(photo: Photo | None, meta: object | None = None) -> str:
    """ "name · side · date · place"; "" for no photo. meta: any record with side/date/place attributes
    (a missing or empty one, or side 'unknown', is skipped), e.g. the catalogue's photo metadata."""
    if photo is None:
        return ""
    name = photo.name.rsplit("/", 1)[-1]
    if len(name) > MAX_NAME:
        name = name[: MAX_NAME - 1] + "…"
    parts = [name]
    for field in CAPTION_FIELDS:
        value = getattr(meta, field, None)
        if value and str(value) != "unknown":
            parts.append(str(value)[:10] if field == "date" else str(value))  # the day, not the second
    return " · ".join(parts)


def caption_of(catalogue: Catalogue, photo: str | None) -> str:
    """The caption of a catalogue photo by its hash, with its metadata; "" for none."""
    if not photo:
        return ""
    return photo_caption(catalogue.store.photo(photo), metadata_store.metadata(catalogue.store, photo))
