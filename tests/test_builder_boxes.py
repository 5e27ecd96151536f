"""Detector boxes: every accepted format (strings from the real Happywhale CSVs), choosing, and crops."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tfrecords_builder.errors import BuildInputError
from tfrecords_builder.tables import read_boxes_csv
from tfwhale.contracts.build_sources import BuildSources
from tfwhale.contracts.records import ManifestError
from tfwhale.core import files
from tfwhale.imaging.box_choice import choose_box
from tfwhale.imaging.box_table import TableError
from tfwhale.imaging.crop_box import (
    crop_region,
    format_box,
    parse_box_list,
    parse_box_text,
    parse_conf_list,
)
from tfwhale.query.records_photos import RecordsPhotos

# Heads of /work/shared/data/happywhale/test2.csv and fullbody/backfin_test_charm.csv.
DETIC_CSV = """image,predictions,box
000110707af0ba.jpg,37c7aba965a5 114207cab555 a6e325d8e924 19fbb960f07d new_individual,329 874 2934 1271
0006287ec424cb.jpg,37c7aba965a5 114207cab555 a6e325d8e924 19fbb960f07d new_individual,1039 1636 1833 1875
000809ecb2ccad.jpg,37c7aba965a5 114207cab555 a6e325d8e924 19fbb960f07d new_individual,
"""
CHARM_CSV = """bbox,conf,height,image,image_id,predictions,width
[[2399 1035 2589 1130]],[0.0366211],2399,000110707af0ba.jpg,000110707af0ba.jpg,x new_individual,3599
[[1299 1632 1556 1761]],[0.880371],2400,0006287ec424cb.jpg,0006287ec424cb.jpg,x new_individual,3600
,,1488,000809ecb2ccad.jpg,000809ecb2ccad.jpg,x new_individual,2240
[[ 213  813 3054 1301]],[0.839355],2399,0a.jpg,0a.jpg,x new_individual,3599
"""


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "box"),
    [
        ("2 116 802 665", (2, 116, 802, 665)),
        ("2,116,802,665", (2, 116, 802, 665)),
        ("2, 116, 802, 665", (2, 116, 802, 665)),
        ("[[ 213  813 3054 1301]]", (213, 813, 3054, 1301)),
        ("[[1299 1632 1556 1761]]", (1299, 1632, 1556, 1761)),
        ("[[10.5 20.25 30 4e1]]", (10.5, 20.25, 30, 40)),
        ("[[0 0 10 10]\n [0 0 100 50]]", (0, 0, 100, 50)),
    ],
)
def test_box_formats_parse(text, box):
    assert parse_box_text(text) == box


@pytest.mark.parametrize("text", ["", "  ", "nan", "NaN", "[]", "[[]]", "None"])
def test_no_box_texts(text):
    assert parse_box_text(text) is None
    assert parse_box_list(text) == []


@pytest.mark.parametrize("text", ["1 2 3", "1 2 3 4 5", "a b c d", "[[1 2 3 4]", "1;2;3;4"])
def test_malformed_box_names_the_text(text):
    with pytest.raises(ValueError, match=repr(text).replace("[", r"\[")):
        parse_box_text(text)


def test_conf_formats_parse():
    assert parse_conf_list("[0.839355]") == [0.839355]
    assert parse_conf_list("0.88") == [0.88]
    assert parse_conf_list("[0.9, 0.2]") == [0.9, 0.2]
    assert parse_conf_list("") == []
    with pytest.raises(ValueError, match="high"):
        parse_conf_list("high")


def test_format_box_round_trips():
    for box in [(2.0, 116.0, 802.0, 665.0), (10.5, 0.1, 30.25, 1e-3)]:
        assert parse_box_text(format_box(box)) == box
    assert format_box((2.0, 116.0, 802.0, 665.0)) == "2 116 802 665"
    assert format_box(None) == ""


def test_choose_box_prefers_confidence_then_size():
    small, large = (0.0, 0.0, 10.0, 10.0), (0.0, 0.0, 100.0, 100.0)
    assert choose_box([(small, 0.9), (large, 0.5)]) == small
    assert choose_box([(small, 0.9), (large, 0.5)], min_conf=0.95) is None
    assert choose_box([(small, 0.9), (large, None)]) == large
    assert choose_box([(small, 0.3), (large, None)], min_conf=0.5) == large
    assert choose_box([]) is None


def test_detic_box_csv(tmp_path):
    boxes = read_boxes_csv(write(tmp_path / "test2.csv", DETIC_CSV))
    assert boxes == {
        "000110707af0ba.jpg": (329, 874, 2934, 1271),
        "0006287ec424cb.jpg": (1039, 1636, 1833, 1875),
        "000809ecb2ccad.jpg": None,
    }


def test_yolo_bbox_conf_csv_with_min_conf(tmp_path):
    csv = write(tmp_path / "fullbody_test_charm.csv", CHARM_CSV)
    every = read_boxes_csv(csv)
    assert every["000110707af0ba.jpg"] == (2399, 1035, 2589, 1130)
    assert every["0a.jpg"] == (213, 813, 3054, 1301)
    assert every["000809ecb2ccad.jpg"] is None
    confident = read_boxes_csv(csv, min_conf=0.5)
    assert confident["000110707af0ba.jpg"] is None  # conf 0.0366 < 0.5
    assert confident["0006287ec424cb.jpg"] == (1299, 1632, 1556, 1761)
    assert read_boxes_csv(csv, min_conf=0.85)["0a.jpg"] is None  # conf 0.839 < 0.85


def test_plain_conf_and_corner_columns(tmp_path):
    text = "image,x1,y1,x2,y2,conf\na.jpg,1,2,3,4,0.88\nb.jpg,5,6,7,8,0.2\nc.jpg,,,,,\n"
    csv = write(tmp_path / "corners.csv", text)
    assert read_boxes_csv(csv) == {"a.jpg": (1, 2, 3, 4), "b.jpg": (5, 6, 7, 8), "c.jpg": None}
    assert read_boxes_csv(csv, min_conf=0.5)["b.jpg"] is None
    no_conf = write(tmp_path / "corners2.csv", "image,x1,y1,x2,y2\na.jpg,1.5,2,3,4\n")
    assert read_boxes_csv(no_conf) == {"a.jpg": (1.5, 2, 3, 4)}


def test_several_boxes_in_a_cell(tmp_path):
    text = (
        "image,bbox,conf\n"
        'paired.jpg,"[[0 0 10 10], [0 0 100 100]]","[0.9, 0.4]"\n'
        'unpaired.jpg,"[[0 0 10 10], [0 0 100 100]]",[0.9]\n'
        'weak.jpg,"[[0 0 10 10], [0 0 100 100]]",[0.1]\n'
    )
    boxes = read_boxes_csv(write(tmp_path / "multi.csv", text), min_conf=0.3)
    assert boxes["paired.jpg"] == (0, 0, 10, 10)  # highest confidence wins over size
    assert boxes["unpaired.jpg"] == (0, 0, 100, 100)  # confidences do not pair up: largest
    assert boxes["weak.jpg"] is None  # nothing reaches min_conf


def test_rows_of_one_image_pool_their_boxes(tmp_path):
    text = "image,bbox,conf\na.jpg,[[0 0 100 100]],[0.3]\na.jpg,[[5 5 10 10]],[0.7]\n"
    assert read_boxes_csv(write(tmp_path / "rows.csv", text)) == {"a.jpg": (5, 5, 10, 10)}


def test_boxes_csv_without_box_columns_lists_formats(tmp_path):
    csv = write(tmp_path / "odd.csv", "image,left,top\na.jpg,1,2\n")
    with pytest.raises(BuildInputError) as caught:
        read_boxes_csv(csv)
    message = str(caught.value)
    assert "odd.csv: no box columns; found ['image', 'left', 'top']" in message
    assert "'box'" in message and "'bbox'" in message and "'x1', 'y1', 'x2', 'y2'" in message


def test_boxes_csv_without_image_column_is_fatal(tmp_path):
    with pytest.raises(BuildInputError, match=r"missing column\(s\) \['image'\]"):
        read_boxes_csv(write(tmp_path / "b.csv", "img,box\na.jpg,1 2 3 4\n"))


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("image,bbox,conf\na.jpg,[[1 2 3 4]],[0.5]\nb.jpg,[[1 2 3]],[0.5]\n", "bbox"),
        ("image,bbox,conf\na.jpg,[[1 2 3 4]],[0.5]\nb.jpg,[[1 2 3 4]],[high]\n", "conf"),
        ("image,box\na.jpg,1 2 3 4\nb.jpg,1 2 3 4 5\n", "box"),
        ("image,x1,y1,x2,y2\na.jpg,1,2,3,4\nb.jpg,1,,3,4\n", "x1,y1,x2,y2"),
    ],
)
def test_bad_box_cell_names_file_row_field(tmp_path, text, field):
    with pytest.raises(BuildInputError, match=rf"bad\.csv: row 3, field '{field}'"):
        read_boxes_csv(write(tmp_path / "bad.csv", text))


def test_one_reader_strict_for_the_build_lenient_for_display(tmp_path, caplog):
    """The builder's and the catalogue's boxes come from one reader: the same choice where the table is
    good; where it is not, the build stops naming file/row/field and the display just has no boxes."""
    good = write(
        tmp_path / "boxes.csv", "image,bbox,conf\na.jpg,[[0 0 100 100]],[0.3]\na.jpg,[[5 5 9 9]],[0.7]\n"
    )
    sources = {"boxes": {"path": good}, "train_csv": {"path": write(tmp_path / "t.csv", "image\na.jpg\n")}}
    for strict in (True, False):
        assert BuildSources(sources, 0.5, strict=strict).boxes() == {"a.jpg": (5, 5, 9, 9)}
    assert RecordsPhotos(BuildSources(sources, 0.8, strict=False)).boxes == {}  # none reaches 0.8
    bad = write(tmp_path / "bad.csv", "image,box\na.jpg,1 2 3 4\nb.jpg,1 2 3\n")
    with pytest.raises(TableError, match=r"bad\.csv: row 3, field 'box'"):
        BuildSources({"boxes": {"path": bad}}, strict=True).box_table()
    assert RecordsPhotos(BuildSources({"boxes": {"path": bad}}, strict=False)).boxes == {}
    assert "bad.csv: row 3, field 'box'" in caplog.text  # the display says why it has no boxes
    # Without --boxes: the train CSV's own box columns (none here: no boxes, and nothing to warn about).
    caplog.clear()
    assert BuildSources({"train_csv": sources["train_csv"]}, strict=False).boxes() == {}
    assert "not readable" not in caplog.text


def test_strict_sources_refuse_a_table_changed_since_the_build(tmp_path):
    csv = write(tmp_path / "train.csv", "image,box\na.jpg,1 2 3 4\n")
    sources = BuildSources({"train_csv": {"path": csv, "sha256": files.sha256(csv)}}, strict=True)
    sources.check_unchanged()  # as built: nothing to say
    write(tmp_path / "train.csv", "image,box\na.jpg,1 2 3 5\n")
    with pytest.raises(ManifestError, match=r"train\.csv: changed since the build \(sha256 differs"):
        sources.check_unchanged()


def test_crop_grows_box_about_its_centre():
    # centre (20, 40), 20x40 box -> 24x48 at 1.2 and 30x60 at 1.5
    assert crop_region((10, 20, 30, 60), 100, 100) == ((8, 16, 32, 64), None)
    assert crop_region((10, 20, 30, 60), 100, 100, enlarge=1.5) == ((5, 10, 35, 70), None)
    assert crop_region((10, 20, 30, 60), 100, 100, enlarge=1.0) == ((10, 20, 30, 60), None)


def test_crop_rounds_outwards_to_whole_pixels():
    assert crop_region((10.2, 10.7, 20.6, 20.1), 100, 100, enlarge=1.0) == ((10, 10, 21, 21), None)


def test_crop_is_clamped_at_each_border():
    # 50x50 box grows to 60x60: 5 px past each side it touches
    assert crop_region((0, 40, 50, 90), 200, 200) == ((0, 35, 55, 95), None)  # left
    assert crop_region((40, 0, 90, 50), 200, 200) == ((35, 0, 95, 55), None)  # top
    assert crop_region((150, 40, 200, 90), 200, 200) == ((145, 35, 200, 95), None)  # right
    assert crop_region((40, 150, 90, 200), 200, 200) == ((35, 145, 95, 200), None)  # bottom
    assert crop_region((-50, -50, 300, 300), 200, 100) == ((0, 0, 200, 100), None)  # past all four


def test_crop_without_box_is_whole_image():
    assert crop_region(None, 640, 480) == ((0, 0, 640, 480), None)


@pytest.mark.parametrize(
    ("box", "reason"),
    [
        ((300, 10, 400, 50), "box outside image"),
        ((10, 200, 50, 300), "box outside image"),
        ((-40, 10, 0, 50), "box outside image"),
        ((10, 10, 10, 50), "box has zero area"),
        ((10, 10, 50, 10), "box has zero area"),
        ((50, 10, 10, 50), "box corners are inverted (x2 < x1 or y2 < y1)"),
        ((math.nan, 10, 50, 50), "box has non-finite coordinates"),
        ((10, 10, math.inf, 50), "box has non-finite coordinates"),
    ],
)
def test_unusable_box_falls_back_to_whole_image(box, reason):
    assert crop_region(box, 200, 100) == ((0, 0, 200, 100), reason)


def test_crop_never_empty_for_a_sliver_at_the_edge():
    (left, top, right, bottom), reason = crop_region((199.5, 99.9, 250, 150), 200, 100)
    assert reason is None
    assert right > left and bottom > top
    assert (right, bottom) == (200, 100)


def test_shrunk_box_off_the_image_falls_back():
    assert crop_region((199.5, 0, 250, 10), 200, 100, enlarge=0.01) == ((0, 0, 200, 100), "box outside image")
    assert crop_region((0, 0, 10, 10), 200, 100, enlarge=0.0001) == ((4, 4, 6, 6), None)


def test_crop_rejects_bad_arguments():
    with pytest.raises(ValueError, match="image size"):
        crop_region(None, 0, 10)
    with pytest.raises(ValueError, match="enlarge"):
        crop_region((1, 1, 2, 2), 10, 10, enlarge=0)
