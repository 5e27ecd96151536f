"""Train/test table loading: cleaning, every reject type, every fatal input error, label maps."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tfrecords_builder.errors import REJECT_COLUMNS, BuildInputError, Reject
from tfrecords_builder.tables import (
    SPECIES_FIXES,
    TEST_COLUMNS,
    TRAIN_COLUMNS,
    label_maps,
    load_test_table,
    load_train_table,
    photo_counts,
    read_csv_table,
)

HEADER = "image,species,individual_id,box\n"


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def images_folder(tmp_path: Path, *names: str) -> str:
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"jpeg")
    return str(folder)


def rejects_by_image(rejects: list[Reject]) -> dict[str, Reject]:
    return {reject.image: reject for reject in rejects}


def test_reject_record_matches_its_columns():
    assert tuple(field.name for field in dataclasses.fields(Reject)) == REJECT_COLUMNS
    reject = Reject("a.jpg", 2, "image", "why")
    with pytest.raises(dataclasses.FrozenInstanceError):
        reject.row = 3  # type: ignore[misc]
    assert issubclass(BuildInputError, ValueError)


def test_clean_train_table_has_paths_rows_boxes(tmp_path):
    csv = write(tmp_path / "train.csv", HEADER + "a.jpg,beluga,id1,2 116 802 665\n b.jpg , beluga ,id2,\n")
    images = images_folder(tmp_path, "a.jpg", "b.jpg")
    train, rejects = load_train_table(csv, images)
    assert rejects == []
    assert tuple(train.columns) == TRAIN_COLUMNS
    assert train["image"].tolist() == ["a.jpg", "b.jpg"]
    assert train["path"].tolist() == [str(Path(images) / "a.jpg"), str(Path(images) / "b.jpg")]
    assert train["row"].tolist() == [2, 3]
    assert train["species"].tolist() == ["beluga", "beluga"]
    assert train["box_text"].tolist() == ["2 116 802 665", ""]


def test_train_without_box_column_has_empty_box_text(tmp_path):
    csv = write(tmp_path / "train.csv", "image,species,individual_id\na.jpg,beluga,id1\n")
    train, _ = load_train_table(csv, "unused", check_files=False)
    assert train["box_text"].tolist() == [""]


def test_yolo_columns_in_train_csv_become_box_text(tmp_path):
    text = 'image,species,individual_id,bbox,conf\na.jpg,beluga,id1,"[[1 2 3 4], [0 0 50 50]]","[0.9, 0.2]"\n'
    train, _ = load_train_table(write(tmp_path / "t.csv", text), "unused", check_files=False)
    assert train["box_text"].tolist() == ["1 2 3 4"]


def test_species_typos_are_fixed(tmp_path):
    rows = "".join(f"{i}.jpg,{typo},id{i},\n" for i, typo in enumerate([*SPECIES_FIXES, "beluga"]))
    train, _ = load_train_table(write(tmp_path / "train.csv", HEADER + rows), "unused", check_files=False)
    assert train["species"].tolist() == [
        "bottlenose_dolphin",
        "killer_whale",
        "short_finned_pilot_whale",
        "short_finned_pilot_whale",
        "beluga",
    ]


def test_empty_fields_are_rejected_with_row_and_field(tmp_path):
    text = HEADER + "a.jpg,beluga,id1,\n,beluga,id2,\nc.jpg,beluga,,\nd.jpg,,id4,\n"
    train, rejects = load_train_table(write(tmp_path / "train.csv", text), "unused", check_files=False)
    assert train["image"].tolist() == ["a.jpg"]
    assert [(r.image, r.row, r.field) for r in rejects] == [
        ("", 3, "image"),
        ("c.jpg", 4, "individual_id"),
        ("d.jpg", 5, "species"),
    ]
    assert rejects[1].reason == "empty individual_id"
    assert all(isinstance(r.row, int) for r in rejects)


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("/etc/passwd", "absolute path"),
        ("../secret.jpg", "'..' path component"),
        ("sub/../../secret.jpg", "'..' path component"),
        ("sub\\x.jpg", "backslash"),
        ("C:x.jpg", "drive letter"),
        ("gs://other/x.jpg", "URL scheme"),
    ],
)
def test_names_escaping_the_images_folder_are_refused(tmp_path, name, what):
    text = HEADER + f"ok.jpg,beluga,id1,\n{name},beluga,id2,\n"
    images = images_folder(tmp_path, "ok.jpg")
    train, rejects = load_train_table(write(tmp_path / "train.csv", text), images)
    assert train["image"].tolist() == ["ok.jpg"]
    [reject] = rejects
    assert (reject.image, reject.row, reject.field) == (name, 3, "image")
    assert "escapes the images folder" in reject.reason and what in reject.reason


def test_names_in_subfolders_are_allowed_and_checked(tmp_path):
    text = HEADER + "sub/a.jpg,beluga,id1,\nsub/missing.jpg,beluga,id2,\n..a.jpg,beluga,id3,\n"
    images = images_folder(tmp_path, "sub/a.jpg", "..a.jpg")
    train, rejects = load_train_table(write(tmp_path / "train.csv", text), images)
    assert train["image"].tolist() == ["sub/a.jpg", "..a.jpg"]
    assert [(r.image, r.row, r.field) for r in rejects] == [("sub/missing.jpg", 3, "image")]


def test_duplicate_rows_keep_the_first(tmp_path):
    text = HEADER + "a.jpg,beluga,id1,\nb.jpg,beluga,id2,\na.jpg,beluga,id1,\na.jpg,beluga,id1,\n"
    train, rejects = load_train_table(write(tmp_path / "train.csv", text), "unused", check_files=False)
    assert train["image"].tolist() == ["a.jpg", "b.jpg"]
    assert train["row"].tolist() == [2, 3]
    assert [(r.row, r.field, r.reason) for r in rejects] == [
        (4, "image", "duplicate of row 2"),
        (5, "image", "duplicate of row 2"),
    ]


def test_conflicting_duplicates_are_all_refused(tmp_path):
    text = HEADER + "a.jpg,beluga,id1,\nb.jpg,beluga,id2,\na.jpg,beluga,id9,\n"
    train, rejects = load_train_table(write(tmp_path / "train.csv", text), "unused", check_files=False)
    assert train["image"].tolist() == ["b.jpg"]
    assert [(r.image, r.row, r.field) for r in rejects] == [
        ("a.jpg", 2, "individual_id"),
        ("a.jpg", 4, "individual_id"),
    ]
    reason = rejects[0].reason
    assert "conflicting individual_id" in reason
    assert "row 2: 'id1'" in reason and "row 4: 'id9'" in reason


def test_missing_image_files_are_rejected_only_when_checked(tmp_path):
    csv = write(tmp_path / "train.csv", HEADER + "a.jpg,beluga,id1,\nb.jpg,beluga,id2,\n")
    images = images_folder(tmp_path, "a.jpg")
    train, rejects = load_train_table(csv, images)
    assert train["image"].tolist() == ["a.jpg"]
    assert [(r.image, r.row, r.field) for r in rejects] == [("b.jpg", 3, "image")]
    assert "file not found" in rejects[0].reason and images in rejects[0].reason
    unchecked, none = load_train_table(csv, images, check_files=False)
    assert len(unchecked) == 2 and none == []


def test_missing_images_folder_is_fatal(tmp_path):
    csv = write(tmp_path / "train.csv", HEADER + "a.jpg,beluga,id1,\n")
    with pytest.raises(BuildInputError, match="no_such_folder: images folder not found"):
        load_train_table(csv, str(tmp_path / "no_such_folder"))


def test_all_rows_rejected_is_fatal(tmp_path):
    csv = write(tmp_path / "train.csv", HEADER + "a.jpg,beluga,,\n")
    with pytest.raises(BuildInputError, match=r"train\.csv: no usable rows.*row 2, field 'individual_id'"):
        load_train_table(csv, "unused", check_files=False)


def test_missing_csv_is_fatal(tmp_path):
    with pytest.raises(BuildInputError, match=r"nope\.csv: file not found"):
        read_csv_table(str(tmp_path / "nope.csv"), ["image"])


def test_empty_csv_is_fatal(tmp_path):
    with pytest.raises(BuildInputError, match=r"empty\.csv: file is empty.*'image'"):
        read_csv_table(write(tmp_path / "empty.csv", ""), ["image"])


def test_header_only_csv_is_fatal(tmp_path):
    with pytest.raises(BuildInputError, match=r"header\.csv: no data rows"):
        read_csv_table(write(tmp_path / "header.csv", HEADER + "\n\n"), ["image"])


def test_misspelled_column_gets_closest_name(tmp_path):
    csv = write(tmp_path / "train.csv", "image,species,individual_ids\na.jpg,beluga,id1\n")
    with pytest.raises(BuildInputError) as caught:
        load_train_table(csv, "unused", check_files=False)
    message = str(caught.value)
    assert "train.csv: missing column(s) ['individual_id']" in message
    assert "'individual_ids' looks like a misspelling of 'individual_id'" in message
    assert "expected columns ['image', 'species', 'individual_id']" in message
    assert "found ['image', 'species', 'individual_ids']" in message


def test_unrelated_missing_column_gets_no_suggestion(tmp_path):
    csv = write(tmp_path / "train.csv", "image,species,whale\na.jpg,beluga,id1\n")
    with pytest.raises(BuildInputError, match=r"missing column\(s\) \['individual_id'\]; expected") as caught:
        load_train_table(csv, "unused", check_files=False)
    assert "misspelling" not in str(caught.value)


def test_row_numbers_are_csv_lines_across_blank_lines(tmp_path):
    csv = write(tmp_path / "t.csv", "\ufeffimage , other\na.jpg,1\n\n b.jpg ,\n")
    table = read_csv_table(csv, ["image"])
    assert table["image"].tolist() == ["a.jpg", "b.jpg"]
    assert table["row"].tolist() == [2, 4]
    assert table["other"].tolist() == ["1", ""]


def test_bad_box_cell_in_train_csv_is_fatal(tmp_path):
    csv = write(tmp_path / "train.csv", HEADER + "a.jpg,beluga,id1,1 2 3 4\nb.jpg,beluga,id2,1 2 x 4\n")
    with pytest.raises(BuildInputError, match=r"train\.csv: row 3, field 'box': .*'1 2 x 4'"):
        load_train_table(csv, "unused", check_files=False)


def test_test_table_from_csv(tmp_path):
    text = "image,predictions,box\na.jpg,x new_individual,329 874 2934 1271\nb.jpg,x,\nc.jpg,x,\n"
    images = images_folder(tmp_path, "a.jpg", "b.jpg")
    test, rejects = load_test_table(images, write(tmp_path / "test2.csv", text))
    assert tuple(test.columns) == TEST_COLUMNS
    assert test["image"].tolist() == ["a.jpg", "b.jpg"]
    assert test["row"].tolist() == [2, 3]
    assert test["box_text"].tolist() == ["329 874 2934 1271", ""]
    assert [(r.image, r.row, r.field) for r in rejects] == [("c.jpg", 4, "image")]


def test_test_table_from_csv_rejects_duplicates_and_escapes(tmp_path):
    text = "image\na.jpg\na.jpg\n../b.jpg\n"
    test, rejects = load_test_table("unused", write(tmp_path / "s.csv", text), check_files=False)
    assert test["image"].tolist() == ["a.jpg"]
    by_image = rejects_by_image(rejects)
    assert by_image["a.jpg"].reason == "duplicate of row 2" and by_image["a.jpg"].row == 3
    assert by_image["../b.jpg"].row == 4


def test_test_table_from_listing(tmp_path):
    images = images_folder(tmp_path, "b.JPG", "a.jpeg", "c.png", "d.webp", "e.tiff", "notes.txt", "f.bmp")
    test, rejects = load_test_table(images)
    assert rejects == []
    assert test["image"].tolist() == ["a.jpeg", "b.JPG", "c.png", "d.webp", "e.tiff", "f.bmp"]
    assert test["row"].tolist() == [None] * 6
    assert test["box_text"].tolist() == [""] * 6
    assert test["path"].tolist()[0] == str(Path(images) / "a.jpeg")


def test_test_listing_of_missing_or_imageless_folder_is_fatal(tmp_path):
    with pytest.raises(BuildInputError, match="images folder not found"):
        load_test_table(str(tmp_path / "nothing"))
    images = images_folder(tmp_path, "readme.txt")
    with pytest.raises(BuildInputError, match=r"images: no images \(looked for .jpg"):
        load_test_table(images)


def test_label_maps_are_sorted_and_photo_counts_exact(tmp_path):
    text = HEADER + "a.jpg,sei_whale,zz,\nb.jpg,beluga,aa,\nc.jpg,kiler_whale,zz,\nd.jpg,beluga,mm,\n"
    train, _ = load_train_table(write(tmp_path / "train.csv", text), "unused", check_files=False)
    individuals, species = label_maps(train)
    assert individuals == ["aa", "mm", "zz"]
    assert species == ["beluga", "killer_whale", "sei_whale"]
    assert label_maps(train.iloc[::-1]) == (individuals, species)
    assert photo_counts(train) == {"aa": 1, "mm": 1, "zz": 2}
    assert list(photo_counts(train)) == ["aa", "mm", "zz"]
