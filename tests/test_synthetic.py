"""The synthetic data set: Happywhale layout, determinism, long tail, and identity in shape, not colour."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tfwhale.core import files
from tfwhale.core.labels import NEW_INDIVIDUAL
from tfwhale.core.metrics import map_at_k
from tfwhale.synthetic import cli as synthetic_cli
from tfwhale.synthetic import dataset as synthetic
from tfwhale.synthetic import identity as identities
from tfwhale.synthetic.render import render_photo


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> synthetic.SyntheticSummary:
    return synthetic.generate(str(tmp_path_factory.mktemp("synthetic")), progress=False)


def _csv(path: str) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _image_path(summary: synthetic.SyntheticSummary, name: str) -> str:
    train_path = files.join(summary.train_images_dir, name)
    return train_path if files.exists(train_path) else files.join(summary.test_images_dir, name)


def _open(path: str) -> Image.Image:
    image = Image.open(io.BytesIO(files.read_bytes(path)))
    image.load()
    return image


def _colour_histogram(image: Image.Image) -> np.ndarray:
    """8x8x8 RGB histogram, unit length."""
    bins = np.asarray(image.convert("RGB")).reshape(-1, 3) // 32
    counts = np.bincount(bins[:, 0] * 64 + bins[:, 1] * 8 + bins[:, 2], minlength=512).astype(np.float64)
    return counts / np.linalg.norm(counts)


def _edge_descriptor(image: Image.Image) -> np.ndarray:
    """Gradient magnitude of a 48x32 grey thumbnail, centred and unit length: shape, not colour."""
    grey = np.asarray(image.convert("L").resize((48, 32), Image.BILINEAR), dtype=np.float64)
    gy, gx = np.gradient(grey)
    magnitude = np.hypot(gx, gy).ravel()
    magnitude -= magnitude.mean()
    return magnitude / np.linalg.norm(magnitude)


def _knn_map5(gallery: np.ndarray, gallery_ids, queries: np.ndarray, query_ids) -> float:
    """Cosine kNN, top-5 distinct gallery individuals per query, scored by MAP@5."""
    gallery_ids = np.asarray(gallery_ids)
    predictions = []
    for similarity in queries @ gallery.T:
        predictions.append(list(dict.fromkeys(gallery_ids[np.argsort(-similarity, kind="stable")]))[:5])
    return map_at_k(list(query_ids), predictions)


def test_layout_columns_and_counts(dataset):
    train = _csv(dataset.train_csv)
    boxes = _csv(dataset.boxes_csv)
    solution = _csv(dataset.test_solution_csv)
    full = _csv(dataset.test_full_csv)
    submission = _csv(dataset.sample_submission_csv)
    assert list(train.columns) == ["image", "species", "individual_id"]
    assert list(boxes.columns) == ["image", "box"]
    assert list(solution.columns) == ["image", "individual_id"]
    assert list(full.columns) == ["image", "species", "individual_id"]
    assert list(submission.columns) == ["image", "predictions"]
    assert len(train) == dataset.train_images and len(solution) == dataset.test_images
    assert sorted(files.listdir(dataset.train_images_dir)) == sorted(train.image)
    assert sorted(files.listdir(dataset.test_images_dir)) == sorted(solution.image)
    assert list(submission.image) == list(solution.image) == list(full.image)
    assert submission.image.is_unique and (submission.predictions == NEW_INDIVIDUAL).all()
    assert sorted(boxes.image) == sorted([*train.image, *solution.image])
    assert set(train.species) == set(dataset.species) == set(identities.SPECIES)
    assert dataset.individuals == 60 and dataset.new_individuals == 6
    assert dataset.train_individuals == train.individual_id.nunique() == 54
    assert train.image.str.fullmatch(r"[0-9a-f]{14}\.jpg").all()
    assert train.individual_id.str.fullmatch(r"[0-9a-f]{12}").all()


def test_images_decode_and_boxes_lie_inside(dataset):
    boxes = _csv(dataset.boxes_csv)
    areas = []
    for name, box in zip(boxes.image, boxes.box, strict=True):
        image = _open(_image_path(dataset, name))
        assert image.mode == "RGB" and max(image.size) == 384, name
        if not box:
            continue
        x1, y1, x2, y2 = (int(v) for v in box.split())
        assert 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height, (name, box, image.size)
        areas.append((x2 - x1) * (y2 - y1) / (image.width * image.height))
    missing = int((boxes.box == "").sum())
    assert missing == dataset.missing_boxes and 0 < missing < 0.1 * len(boxes)
    # The animal fills a minority of the frame, so cropping to the box matters.
    assert 0.2 <= np.median(areas) <= 0.5 and max(areas) < 0.75


def test_new_individuals_are_absent_from_train(dataset):
    train_ids = set(_csv(dataset.train_csv).individual_id)
    solution = _csv(dataset.test_solution_csv)
    truth = _csv(dataset.test_full_csv).set_index("image").individual_id
    new = solution.individual_id == NEW_INDIVIDUAL
    assert new.sum() == dataset.test_images_of_new > 0
    assert not set(truth[solution.image[new]]) & train_ids
    assert set(truth[solution.image[~new]]) <= train_ids
    assert (solution.individual_id[~new].to_numpy() == truth[solution.image[~new]].to_numpy()).all()
    assert len(set(truth[solution.image[new]])) == dataset.new_individuals


def test_photos_per_individual_are_long_tailed(dataset):
    everyone = pd.concat([_csv(dataset.train_csv), _csv(dataset.test_full_csv)])
    photos = everyone.groupby("individual_id").size()
    assert len(photos) == dataset.individuals
    assert (photos <= 2).mean() > 0.5
    assert photos.max() >= 8


def test_no_singletons_gives_every_animal_min_photos():
    rng = np.random.default_rng(0)
    _, _, is_new, photos = synthetic._plan(rng, 180, 0.2, 0.05, min_photos=3, singletons=False)
    per_animal = np.bincount([p.individual for p in photos], minlength=180)
    in_train = np.bincount([p.individual for p in photos if p.split == "train"], minlength=180)
    assert per_animal.min() == 3
    assert (in_train[~is_new] >= 1).all() and (in_train[is_new] == 0).all()
    _, _, _, long_tail = synthetic._plan(np.random.default_rng(0), 180, 0.2, 0.05, min_photos=3)
    assert (np.bincount([p.individual for p in long_tail]) == 1).mean() > 0.4
    with pytest.raises(ValueError, match="min_photos >= 2"):
        synthetic.generate("unused", singletons=False)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    def snapshot(folder: str, seed: int) -> dict[str, bytes]:
        out = str(tmp_path / folder)
        synthetic.generate(out, individuals=8, seed=seed, image_size=128, progress=False)
        paths = files.glob(f"{out}/*.csv") + files.glob(f"{out}/*/*.jpg")
        return {path[len(out) :]: files.read_bytes(path) for path in paths}

    first, again, other = snapshot("a", 3), snapshot("b", 3), snapshot("c", 4)
    assert len(first) > 10 and first == again
    assert first["/train.csv"] != other["/train.csv"]
    first_image = next(data for path, data in sorted(first.items()) if path.endswith(".jpg"))
    assert first_image not in other.values()


def test_template_is_the_identity():
    identity = identities.make_identity("humpback_whale", np.random.default_rng(1))
    assert identity == identities.make_identity("humpback_whale", np.random.default_rng(1))
    template = identities.draw_template(identity, 200)
    again = identities.draw_template(identity, 200)
    assert np.array_equal(template.mask, again.mask) and np.array_equal(template.pattern, again.pattern)
    other = identities.draw_template(
        identities.make_identity("humpback_whale", np.random.default_rng(2)), 200
    )
    assert template.mask.shape == other.mask.shape == (100, 200)
    # Different animals: their marks land in different places (not just a few edge pixels apart).
    assert np.abs(template.pattern - other.pattern).mean() > 0.1 * template.pattern.mean()
    photo_a, _ = render_photo(identity, template, np.random.default_rng(10), 160)
    photo_b, _ = render_photo(identity, template, np.random.default_rng(11), 160)
    assert not np.array_equal(np.asarray(photo_a), np.asarray(photo_b))


def test_unknown_species_is_refused():
    with pytest.raises(ValueError, match="unknown species 'narwhal'"):
        identities.make_identity("narwhal", np.random.default_rng(0))


def test_colour_histograms_cannot_identify_but_shape_can(dataset):
    """Gallery = train crops, queries = test crops of known individuals, as a submission would be scored."""
    train = _csv(dataset.train_csv)
    truth = _csv(dataset.test_full_csv)
    boxes = _csv(dataset.boxes_csv).set_index("image").box
    known = truth[truth.individual_id.isin(set(train.individual_id))]
    assert len(known) >= 20

    def crop(name: str) -> Image.Image:
        image = _open(_image_path(dataset, name))
        box = boxes[name]
        return image.crop(tuple(int(v) for v in box.split())) if box else image

    gallery = [crop(name) for name in train.image]
    queries = [crop(name) for name in known.image]
    scores = {}
    for name, describe in (("colour", _colour_histogram), ("edges", _edge_descriptor)):
        scores[name] = _knn_map5(
            np.stack([describe(x) for x in gallery]),
            train.individual_id,
            np.stack([describe(x) for x in queries]),
            known.individual_id,
        )
    assert scores["colour"] < 0.2, f"colour histograms identify individuals: {scores}"
    assert scores["edges"] > 2 * scores["colour"] + 0.1, scores


def test_shape_descriptor_identifies_when_pose_is_fixed():
    """Positive control: with pose fixed, a grey edge thumbnail finds the animal and colour does not."""
    gallery, queries, ids = [], [], []
    for index in range(40):
        identity = identities.make_identity(identities.SPECIES[index % 4], np.random.default_rng([7, index]))
        template = identities.draw_template(identity, 173)
        for store, photo in ((gallery, 0), (queries, 1)):
            rng = np.random.default_rng([8, index, photo])
            image, box = render_photo(identity, template, rng, 192, pose_noise=False)
            store.append(image.crop(box))
        ids.append(str(index))
    scores = {}
    for name, describe in (("colour", _colour_histogram), ("edges", _edge_descriptor)):
        scores[name] = _knn_map5(
            np.stack([describe(x) for x in gallery]), ids, np.stack([describe(x) for x in queries]), ids
        )
    assert scores["edges"] > 0.4 and scores["colour"] < 0.2, scores


def test_cli_help_and_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        synthetic_cli.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--individuals", "--seed", "--image-size", "--test-fraction", "--new-fraction"):
        assert option in help_text
    out = str(tmp_path / "cli")
    args = [out, "--individuals", "5", "--image-size", "96", "--seed", "2", "--no-progress"]
    assert synthetic_cli.main(args) == 0
    train = _csv(files.join(out, "train.csv"))
    assert 1 <= train["individual_id"].nunique() <= 5  # the 5 asked for (new ones are in the test set alone)
    for name in train["image"]:
        assert max(Image.open(files.join(out, "train_images", name)).size) == 96
    assert synthetic_cli.main(args) == 2  # refuses to mix with the set already there
    assert synthetic_cli.main([*args, "--overwrite"]) == 0


def test_bad_arguments_name_the_problem(tmp_path):
    out = str(tmp_path / "bad")
    with pytest.raises(ValueError, match="test_fraction"):
        synthetic.generate(out, test_fraction=1.5)
    with pytest.raises(ValueError, match="individuals"):
        synthetic.generate(out, individuals=1)
    synthetic.generate(out, individuals=4, image_size=96, progress=False)
    with pytest.raises(FileExistsError, match=r"train\.csv already exists"):
        synthetic.generate(out, individuals=4, image_size=96, progress=False)
