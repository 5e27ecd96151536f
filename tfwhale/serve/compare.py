"""Side-by-side comparison (serve): which picture of a catalogue photo to show at full size, and the
verified local-feature matches of two photos in each picture's own pixels.

Matches are found as the query path finds them (matching.photo.photo_features: the gallery's match-size
crop; matching.pairs.match_pair: ratio test, mutual check, geometric verification), with the gallery's
own match settings when it re-ranks by local features and the library's defaults otherwise. A gallery
photo shown from the file its stored features were made from uses those, and an upload the ones kept
when it was uploaded; any other picture gets its features computed from itself, once (kept in a small
cache).
"""

from __future__ import annotations

import io
import logging
import mimetypes
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from tfwhale.contracts.local_features import LocalFeatures
from tfwhale.core import files
from tfwhale.imaging.crop_box import parse_box_text
from tfwhale.imaging.crop_frame import aspect_crop_to_photo, crop_to_photo, displayed_size
from tfwhale.imaging.photo_crop import ImageError
from tfwhale.matching.pairs import match_pair
from tfwhale.matching.photo import photo_features
from tfwhale.query.local import MatchSettings
from tfwhale.serve.catalogue import Catalogue
from tfwhale.serve.store import Photo

logger = logging.getLogger(__name__)

CACHED_FEATURES = 64  # photos whose features are kept: an upload and its candidates' photos
COMPUTED_AT_ONCE = 2  # feature extractions at once: each decodes a photo (a large one holds hundreds of MB)
BROWSER_FORMATS = {"JPEG", "PNG", "GIF", "WEBP", "BMP"}
MAX_PAIRS = 300  # matches sent to a browser: more lines hide the photos


class CompareError(ValueError):
    """A photo that cannot be compared (unreadable picture); the message names it."""


@dataclass(frozen=True)
class Shown:
    """A catalogue photo as the compare view shows it: the picture's URL and bytes, its displayed size,
    the box its crop is cut with, and the kept features of exactly this picture (the gallery's, or an
    upload's), if any."""

    photo: Photo
    url: str
    data: bytes
    size: tuple[int, int]
    box: tuple | None
    stored: LocalFeatures | None
    original: bool  # the photo as taken (upload or gallery original), not the records' crop


class Comparer:
    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        local = catalogue.engine.path.local
        self.local = local
        self.settings = local.settings if local is not None else MatchSettings()
        self.image = local.image if local is not None else catalogue.engine.manifest.image
        self._stored_index = (
            {} if local is None else {n: i for i, n in enumerate(local.gallery.features.names)}
        )
        self._cache: OrderedDict[str, LocalFeatures] = OrderedDict()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(COMPUTED_AT_ONCE)

    @property
    def gallery_has_features(self) -> bool:
        return self.local is not None

    def original_path(self, photo: Photo) -> str | None:
        """The file a gallery or test photo was made from (the gallery's photos folder), if it is there."""
        if self.local is None or not self.local.photos_root or photo.source not in ("gallery", "test"):
            return None
        if photo.name.startswith("/") or ".." in photo.name.split("/"):  # only below the photos folder
            return None
        path = files.join(self.local.photos_root, photo.name)
        return path if files.exists(path) else None

    def shown(self, sha: str) -> Shown | None:
        """The best picture of a photo: an upload's bytes as uploaded, a gallery photo's original file,
        else the catalogue's crop. None: no such photo. CompareError: the picture cannot be read."""
        photo = self.catalogue.store.photo(sha)
        if photo is None:
            return None
        try:
            data, url, box, original, stored = self._picture(photo)
            size = displayed_size(data)
            parsed = parse_box_text(box) if box else None
        except (OSError, ImageError, ValueError) as err:
            raise CompareError(f"photo {photo.name}: its picture cannot be read ({err})") from None
        return Shown(photo, url, data, size, parsed, stored, original)

    def _picture(self, photo: Photo) -> tuple[bytes, str, str, bool, LocalFeatures | None]:
        """(bytes, URL, box text, is the original, its features where kept: the gallery's, or an
        upload's) of the best picture a browser can show."""
        sha = photo.sha256
        if photo.source == "upload" and self.catalogue.blobs.has(sha):
            data = self.catalogue.blobs.get(sha)
            if browser_shows(data):  # its features were kept at upload (taken from these bytes and box)
                return data, f"/blob/{sha}.jpg", photo.box, True, self.catalogue.upload_features(photo)
        path = self.original_path(photo)
        if path is not None:
            data = files.read_bytes(path)
            if browser_shows(data):
                index = self._stored_index.get(photo.name)
                stored = None if index is None else self.local.gallery.features[index]
                return data, f"/compare/original/{sha}", "", True, stored
        crop = photo.crop_sha256
        return self.catalogue.blobs.get(crop), f"/blob/{crop}.jpg", "", False, None

    def features(self, shown: Shown) -> LocalFeatures:
        """The picture's features: the gallery's or the upload's kept ones, or computed once and cached."""
        if shown.stored is not None:
            return shown.stored
        key = f"{shown.url}|{shown.box}"
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            with self._slots:
                found = photo_features(shown.data, shown.box, self.image, self.settings.sift)
        except ImageError as err:
            raise CompareError(f"photo {shown.photo.name}: {err}") from None
        with self._lock:
            self._cache[key] = found
            while len(self._cache) > CACHED_FEATURES:
                self._cache.popitem(last=False)
        return found

    def to_photo(self, xy: np.ndarray, features: LocalFeatures, shown: Shown) -> np.ndarray:
        """Positions in a picture's matching image -> its displayed pixels."""
        if self.settings.sift.crop == "aspect":  # the matching image is the crop itself, scaled alike
            return aspect_crop_to_photo(xy, features.image_size, shown.size, shown.box, self.image)
        canvas = self.settings.sift.match_size  # the match crop's side; its matching image may be smaller
        frame = np.asarray(features.image_size, np.float64)
        in_canvas = np.asarray(xy, np.float64) * (canvas / np.maximum(frame, 1))
        return crop_to_photo(in_canvas, canvas, shown.size, shown.box, self.image)

    def matches(self, query: Shown, photo: Shown) -> dict:
        """The verified matches of two pictures, as JSON for the compare view (see describe)."""
        query_features, photo_features_ = self.features(query), self.features(photo)
        match = match_pair(query_features, photo_features_, self.settings.pairs)
        keep = np.unique(np.linspace(0, match.inliers - 1, min(match.inliers, MAX_PAIRS)).round().astype(int))
        keep = keep if match.inliers else np.zeros(0, int)
        from_query = self.to_photo(match.query_xy[keep], query_features, query)
        from_photo = self.to_photo(match.gallery_xy[keep], photo_features_, photo)
        pairs = np.round(np.concatenate([from_query, from_photo], axis=1), 1).tolist()
        return {
            "query": self.describe(query, query_features),
            "photo": self.describe(photo, photo_features_),
            "inliers": match.inliers,
            "tentative": match.tentative,
            "geometry": self.settings.pairs.geometry,
            "pairs": pairs,  # [query x, query y, photo x, photo y] in each picture's displayed pixels
        }

    def describe(self, shown: Shown, features: LocalFeatures) -> dict:
        return {
            "photo": shown.photo.sha256,
            "name": shown.photo.name,
            "url": shown.url,
            "width": shown.size[0],
            "height": shown.size[1],
            "original": shown.original,
            "keypoints": len(features),
            "features": _features_source(shown),
        }


def _features_source(shown: Shown) -> str:
    """Where a picture's features came from: kept with the gallery or the upload, or computed now."""
    if shown.stored is None:
        return "computed"
    return "upload" if shown.photo.source == "upload" else "gallery"


def browser_shows(data: bytes) -> bool:
    """Whether browsers display this picture's format (a TIFF upload is shown by its crop instead)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format in BROWSER_FORMATS
    except Exception:  # unreadable: the crop, which the catalogue made itself
        return False


def original_media_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"
