"""A week of photo-ID work in the catalogue app, walked in Chromium as a new user would (not a test).

From a folder of photos sorted by individual (ID/photo.jpg), it keeps back the individuals with the
fewest photos as "unknown" animals and two photos of each other individual as new sightings, makes a
day-one gallery of the rest with the README's command, starts `python -m tfwhale.serve` on it and
works through five days: upload and decide, restart and correct, merge and split, bulk import and
filter, compare, export and rebuild. Every step asserts what a user should see, so the walk stops
loudly on a regression; the screenshots (1366x768) go to --shots.

    python docs/week_walk.py --photos /path/to/nyala-dev --work /tmp/week --shots docs/week
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("TFWHALE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
VIEW = {"width": 1366, "height": 768}
SHOT_LIMIT = 200_000  # bytes: screenshots above it are reduced to fewer colours
timings: dict[str, list[float]] = {}


def natural(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def split_photos(photos: Path, work: Path, n_unknown: int) -> dict:
    """Links (never copies) the photos into work/: photos/ (the gallery), held/ (two photos of each
    gallery individual, kept back as new sightings) and unknown/ (every photo of the n_unknown
    individuals with the fewest photos)."""
    folders = sorted(
        (p for p in photos.iterdir() if p.is_dir()), key=lambda p: (len(list(p.iterdir())), natural(p.name))
    )
    unknown = {p.name for p in folders[:n_unknown]}
    for folder in folders:
        files = sorted(f.name for f in folder.iterdir() if f.is_file())
        for name in files:
            part = "unknown" if folder.name in unknown else ("held" if name in files[:2] else "photos")
            link = work / part / folder.name / name
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to((folder / name).resolve())
    return {
        part: sorted((work / part).iterdir(), key=lambda p: natural(p.name))
        for part in ("photos", "held", "unknown")
    }


def run(command: list[str], cwd: Path) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=cwd, check=True)


class Server:
    """`python -m tfwhale.serve` as a user starts it, in its own process."""

    def __init__(self, work: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "tfwhale.serve", "--gallery", "day1", "--catalogue", "catalogue"]
        command += ["--port", str(port), "--reviewer", "alex"]
        print("$", " ".join(command), flush=True)
        self.log = open(work / "serve.log", "a")  # noqa: SIM115 (open while the server runs)
        self.process = subprocess.Popen(command, cwd=work, stdout=self.log, stderr=subprocess.STDOUT)
        start = time.time()
        while True:
            assert self.process.poll() is None, f"the server stopped: see {work / 'serve.log'}"
            try:
                urllib.request.urlopen(self.url + "/inbox", timeout=5)
                break
            except OSError:
                assert time.time() - start < 300, "the server did not answer within 5 minutes"
                time.sleep(1)
        timings.setdefault("server start to first page (s)", []).append(time.time() - start)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
        self.process.wait(timeout=60)
        self.log.close()


def shot(page, shots: Path, name: str, at=None) -> None:
    from PIL import Image

    if at is not None:
        at.evaluate(
            "element => { element.scrollIntoView(); window.scrollBy(0, -44); }"
        )  # below the status line
    path = shots / f"{name}.png"
    page.screenshot(path=str(path))
    with Image.open(path) as image:
        raw = image.convert("RGB")
    for colours in (256, 128, 64, 32):  # real photos in PNG: fewer colours until it fits the limit
        if path.stat().st_size <= SHOT_LIMIT:
            break
        raw.quantize(colours, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"  screenshot {path} ({path.stat().st_size // 1000} kB)", flush=True)


def result_of(page, name: str):
    return page.locator(".result", has=page.locator("h2", has_text=name))


def labels(result) -> list[str]:
    return result.locator(".candidate").evaluate_all("rows => rows.map(r => r.dataset.label)")


def upload(page, paths: list[Path], side: str, photographer: str) -> None:
    from playwright.sync_api import expect

    page.select_option("#upload-side", side)
    page.fill("#upload-photographer", photographer)
    page.set_input_files("#files", [str(p) for p in paths])
    start = time.time()
    page.click("#identify")
    for path in paths:
        expect(result_of(page, path.name)).to_have_count(1, timeout=180_000)
    took = time.time() - start
    timings.setdefault("upload to answer, per photo (s)", []).append(took / len(paths))
    print(f"  {len(paths)} photo(s) answered in {took:.1f} s", flush=True)


def assign_by_search(page, result, individual: str) -> None:
    from playwright.sync_api import expect

    result.locator(".assign-search").fill(individual)
    found = result.locator(".assign-found .found", has_text=individual).first
    expect(found.locator("button.assign-to")).to_have_text(f"Assign to {individual}")
    assert found.locator("img.thumb").count() >= 1, "the search shows no photos of the individual"
    found.locator("button.assign-to").click()


def best_known(result) -> str:
    """The top-ranked gallery individual (a weak gallery often ranks its new_individual row first)."""
    return next(label for label in labels(result) if label != "new_individual")


def side_of(path: Path) -> str:
    return "left" if "left" in path.name else "right" if "right" in path.name else "unknown"


def truth(path: Path) -> str:
    return path.parent.name


def day1(page, url: str, parts: dict, shots: Path) -> dict:
    from playwright.sync_api import expect

    print("day 1: upload six photos, confirm, assign by search, register, leave one unresolved", flush=True)
    known = sorted(parts["held"], key=lambda p: -len(list((p.parent.parent / "photos" / p.name).iterdir())))[
        :3
    ]
    k = [sorted(folder.glob("*left*"))[0] for folder in known]
    a, b = parts["unknown"][0], parts["unknown"][1]
    u1, u3 = sorted(a.glob("*left*"))[:2]
    u2 = sorted(b.glob("*left*"))[0]
    page.goto(url)
    upload(page, [*k, u1, u2, u3], "left", "Alex")
    for path in (*k, u1, u2, u3):
        rows = labels(result_of(page, path.name))
        rank = rows.index(truth(path)) + 1 if truth(path) in rows else None
        print(f"  {path.name} ({truth(path)}): top 5 {rows}; the right animal at {rank}", flush=True)
    right = [p for p in k if best_known(result_of(page, p.name)) == truth(p)]
    assert right, "no known photo got its animal as the best known individual"
    k1 = right[0]
    rest = [p for p in k if p != k1]
    rest.sort(key=lambda p: truth(p) in labels(result_of(page, p.name)))  # outside the top 5 first
    k2, k3 = rest
    shot(page, shots, "day1-answers", result_of(page, k1.name))

    result = result_of(page, k1.name)
    start = time.time()
    result.locator(f'button.confirm[data-individual="{truth(k1)}"]').click()
    expect(result.locator(".assigned")).to_contain_text(truth(k1))  # the section, re-rendered as decided
    timings.setdefault("confirm to the decided section shown (s)", []).append(time.time() - start)
    expect(result.locator(".message")).to_contain_text(f"confirmed as {truth(k1)}")

    result = result_of(page, k2.name)
    outside = truth(k2) not in labels(result)
    print(f"  assigning {k2.name} by search ({'outside' if outside else 'inside'} the top 5)", flush=True)
    assign_by_search(page, result, truth(k2))
    expect(result.locator(".message")).to_contain_text(f"confirmed as {truth(k2)}")

    result = result_of(page, u1.name)
    new_id = result.locator(".new-id").input_value()
    assert new_id, "no id proposed for a new individual"
    result.locator("button.register").click()
    expect(result.locator(".message")).to_contain_text(f"registered as {new_id}")

    result = result_of(page, u2.name)
    result.locator(".note").fill("head turned, only the rump shows; ask Sam")
    result.locator("button.unresolved").click()
    expect(result.locator(".message")).to_contain_text("left unresolved")
    shot(page, shots, "day1-decided", result_of(page, u1.name))
    return {"k1": k1, "k2": k2, "k3": k3, "u1": u1, "u2": u2, "u3": u3, "new_id": new_id}


def day2(page, url: str, walk: dict, shots: Path) -> None:
    from playwright.sync_api import expect

    print(
        "day 2: after a restart the inbox holds the undecided uploads; decide, undo a wrong confirm",
        flush=True,
    )
    page.goto(f"{url}/inbox")
    names = page.locator("table.inbox tbody tr td:nth-child(2) a").all_inner_texts()
    assert sorted(names) == sorted([walk["k3"].name, walk["u3"].name]), f"inbox after restart: {names}"
    shot(page, shots, "day2-inbox")
    page.goto(f"{url}/inbox?tab=unresolved")
    expect(page.locator("table.inbox")).to_contain_text("ask Sam")

    page.goto(f"{url}/inbox")
    page.locator("table.inbox a", has_text=walk["u3"].name).click()
    section = page.locator(".result")
    expect(section.locator(".stored")).to_contain_text("The answer given at upload")
    if walk["new_id"] in labels(section):
        print(f"  {walk['u3'].name}: yesterday's new {walk['new_id']} is among its candidates", flush=True)
        section.locator(f'button.confirm[data-individual="{walk["new_id"]}"]').click()
    else:
        print(
            f"  {walk['u3'].name}: yesterday's new {walk['new_id']} is not in its top 5; by search",
            flush=True,
        )
        assign_by_search(page, section, walk["new_id"])
    expect(section.locator(".message")).to_contain_text(f"confirmed as {walk['new_id']}")

    k3 = walk["k3"]
    page.goto(f"{url}/inbox")
    page.locator("table.inbox a", has_text=k3.name).click()
    section = page.locator(".result")
    wrong = next(label for label in labels(section) if label not in (truth(k3), "new_individual"))
    section.locator(f'button.confirm[data-individual="{wrong}"]').click()
    expect(section.locator(".message")).to_contain_text(f"confirmed as {wrong}")
    page.reload()
    expect(section.locator(".assigned")).to_contain_text(wrong)
    section.locator("button.undo").click()
    expect(section.locator(".message")).to_contain_text("undid decision")
    expect(section.locator("button.register")).to_be_enabled()
    assign_by_search(page, section, truth(k3))
    expect(section.locator(".message")).to_contain_text(f"confirmed as {truth(k3)}")
    page.reload()
    history_box = section.locator("details", has_text="decision(s) on this photo")
    history_box.locator("summary").click()
    history = history_box.inner_text()
    assert "undo" in history and wrong in history and truth(k3) in history, history
    shot(page, shots, "day2-undo-reassign")
    page.goto(f"{url}/inbox")
    expect(page.locator("table.inbox")).to_contain_text("Nothing here.")


def day3(page, url: str, parts: dict, shots: Path) -> None:
    from playwright.sync_api import expect

    print(
        "day 3: two ids for one animal, merged; a split; the next photo answers with the kept id", flush=True
    )
    folder = parts["unknown"][2]  # one animal's left and right flanks look like two animals
    first, later = sorted({natural(p.name)[1] for p in folder.iterdir()})[:2]
    p1, p2, p3 = (
        folder / f"{first}_leftphoto.jpg",
        folder / f"{first}_rightphoto.jpg",
        folder / f"{later}_rightphoto.jpg",
    )
    page.goto(url)
    for path, new_id in ((p1, "Scar-1"), (p2, "Scar-2")):
        upload(page, [path], side_of(path), "Alex")
        result = result_of(page, path.name)
        result.locator(".new-id").fill(new_id)
        result.locator("button.register").click()
        expect(result.locator(".message")).to_contain_text(f"registered as {new_id}")
    page.goto(f"{url}/individuals/Scar-2")
    page.fill("#merge-into", "Scar-1")
    page.click("#merge")
    expect(page.locator("#correct-message")).to_contain_text("merged Scar-2 into Scar-1")
    expect(page.locator("p.assigned")).to_contain_text("Merged into Scar-1")
    page.goto(f"{url}/individuals/Scar-1")
    expect(page.locator("h2").first).to_contain_text("2 photo(s)")
    page.locator("input.split-photo").last.check()
    page.fill("#split-to", "Scar-3")
    page.click("#split")
    expect(page.locator("#correct-message")).to_contain_text("split 1 photo(s) of Scar-1 off to Scar-3")
    expect(page.locator("h2").first).to_contain_text("1 photo(s)")
    page.locator("button.undo-row", has_text="Undo split").click()  # second thoughts: they are one animal
    expect(page.locator("#correct-message")).to_contain_text("undid decision")
    expect(page.locator("h2").first).to_contain_text("2 photo(s)")
    shot(page, shots, "day3-merged")
    page.goto(url)
    upload(page, [p3], side_of(p3), "Alex")
    result = result_of(page, p3.name)
    rows = labels(result)
    print(f"  the next photo of the animal ({p3.name}): top 5 {rows}", flush=True)
    assert "Scar-2" not in rows, f"a merged id still answers: {rows}"
    if "Scar-1" in rows:
        result.locator('button.confirm[data-individual="Scar-1"]').click()
    else:
        print("  Scar-1 is not in its top 5: assigned by search", flush=True)
        result.locator(".assign-search").fill("Scar")
        expect(result.locator(".assign-found .found").first).to_be_visible()
        found = result.locator(".assign-found .found button.assign-to").all_inner_texts()
        assert "Assign to Scar-1" in found and "Assign to Scar-2" not in found, found
        shot(page, shots, "day3-search-merged", result)
        result.locator(".assign-found button.assign-to", has_text="Scar-1").click()
    expect(result.locator(".message")).to_contain_text("confirmed as Scar-1")


def day4(page, url: str, work: Path, parts: dict, walk: dict, shots: Path) -> None:
    from playwright.sync_api import expect

    print("day 4: bulk import a folder ID/photo.jpg (one broken file); filter by side and date", flush=True)
    folder = work / "import"
    shutil.rmtree(folder, ignore_errors=True)
    for held in parts["held"][3:7]:
        right = sorted(held.glob("*right*"))[0]
        (folder / held.name).mkdir(parents=True)
        shutil.copy(right, folder / held.name / right.name)
    newcomer = parts["unknown"][3]
    (folder / "Stripe-7").mkdir()
    for path in sorted(newcomer.iterdir())[:3]:
        shutil.copy(path, folder / "Stripe-7" / path.name)
    (folder / "Stripe-7" / "broken.jpg").write_bytes(sorted(newcomer.iterdir())[0].read_bytes()[:500])
    page.goto(f"{url}/import")
    page.fill("#import-folder", str(folder))
    page.click("#import-folder-start")
    progress = page.locator("#import-progress")
    expect(progress).to_contain_text("import done", timeout=300_000)
    expect(progress).to_contain_text("7 imported")
    expect(progress).to_contain_text("1 unreadable")
    assert "unreadable" in page.locator("#import-report tr", has_text="broken.jpg").inner_text()
    shot(page, shots, "day4-import")

    k1 = walk["k1"]
    page.goto(f"{url}/individuals/{truth(k1)}")
    page.locator(f'a:has(img[alt="{k1.name}"])').first.click()
    form = page.locator("#metadata")
    form.locator("input[name=date]").fill("2026-11-30 07:40")
    form.locator("input[name=place]").fill("Pafuri waterhole")
    form.locator("button[type=submit]").click()
    expect(form.locator(".meta-message")).to_contain_text("metadata saved")

    page.goto(f"{url}/individuals")
    page.select_option(".filter select[name=side]", "left")
    page.click(".filter button")
    page.wait_for_url("**/individuals?*side=left*")
    shown = set(page.locator("table a").all_inner_texts())
    expected = {truth(walk["k1"]), truth(walk["k2"]), truth(walk["k3"]), walk["new_id"], "Scar-1"}
    # the import reads the side from names like 123_leftphoto.jpg where no CSV gives one
    expected |= {path.parent.name for path in folder.glob("*/*_left*.jpg") if path.name != "broken.jpg"}
    assert shown == expected, f"side=left shows {sorted(shown)}, expected {sorted(expected)}"
    page.fill(".filter input[name=date_from]", "2026-11-29")
    page.click(".filter button")
    expect(page.locator("table a")).to_have_text([truth(k1)])
    shot(page, shots, "day4-filter")
    page.goto(f"{url}/review?side=left")  # a day-one gallery has no test photos: the queue says where to look
    expect(page.locator("#current")).to_contain_text("undecided uploads wait in the Inbox")


def day5(page, url: str, work: Path, walk: dict, shots: Path) -> None:
    from playwright.sync_api import expect

    print("day 5: compare at full size with the verified matches; export; build-tfrecords on it", flush=True)
    k1 = walk["k1"]
    page.goto(f"{url}/individuals/{truth(k1)}")
    page.locator(f'a:has(img[alt="{k1.name}"])').first.click()
    link = page.locator(".candidate", has=page.locator(f'a.label:text-is("{truth(k1)}")')).locator(
        "a.compare-link"
    )
    href = link.first.get_attribute("href")
    start = time.time()
    page.goto(url + href)
    expect(page.locator(".match-count")).to_contain_text("verified match", timeout=60_000)
    timings.setdefault("compare page open to matches drawn (s)", []).append(time.time() - start)
    print(f"  compare: {page.locator('.match-count').inner_text()}", flush=True)
    query = page.locator('.pane[data-side="query"]')
    from PIL import Image

    with Image.open(k1) as original:
        width, height = original.size
    shown = (int(query.get_attribute("data-width")), int(query.get_attribute("data-height")))
    assert shown == (width, height), f"the query is shown at {shown}, not at its full {width}x{height}"
    expect(page.locator('.pane[data-side="photo"] figcaption')).not_to_contain_text("catalogue's crop")
    shot(page, shots, "day5-compare")  # both photos whole, the matches drawn across
    for _ in range(3):
        page.keyboard.press("+")  # zoom into the flank: both panes move together
    zooms = page.locator(".pane").evaluate_all(
        "panes => panes.map(p => p.dataset.zoom + ' ' + p.dataset.pan)"
    )
    assert len(set(zooms)) == 1 and not zooms[0].startswith("1.0000"), (
        f"the panes do not zoom together: {zooms}"
    )
    shot(page, shots, "day5-compare-zoomed")

    page.goto(f"{url}/export")
    page.click("#export")
    result = page.locator("#export-result")
    expect(result).to_contain_text("build-tfrecords", timeout=120_000)
    shot(page, shots, "day5-export")
    export = work / result.inner_text().split("written to ", 1)[1].split(";", 1)[0]  # as the server sees it
    rows = {row["image"]: row for row in csv.DictReader((export / "train.csv").open())}
    row = rows[k1.name]
    assert (row["individual_id"], row["side"], row["date"], row["place"]) == (
        truth(k1), "left", "2026-11-30T07:40:00", "Pafuri waterhole"), row  # fmt: skip
    assert rows[walk["u3"].name]["individual_id"] == walk["new_id"]
    assert {r["individual_id"] for r in rows.values()} >= {"Scar-1", "Stripe-7"}
    assert "Scar-2" not in {r["individual_id"] for r in rows.values()}, "a merged id is exported"
    new_photos = work / "new_photos"
    new_photos.mkdir(exist_ok=True)
    for path in walk["spare"]:
        shutil.copy(path, new_photos / path.name)
    records = work / "records224"
    shutil.rmtree(records, ignore_errors=True)
    build = shutil.which("build-tfrecords", path=os.path.dirname(sys.executable)) or "build-tfrecords"
    run(
        [build, "--data", str(export), "--test-images", "new_photos", "--out", "records224", "--size", "224"],
        work,
    )
    manifest = json.loads((records / "manifest.json").read_text())
    print(f"  rebuilt: {manifest.get('train_count')} gallery and {manifest.get('test_count')} test photos")
    built = set()
    import tensorflow as tf

    from tfwhale.contracts.records import load_manifest, parse_train_example

    loaded = load_manifest(str(records))
    for example in tf.data.TFRecordDataset(loaded.shard_paths("train")).map(parse_train_example):
        built.add(example["image_name"].numpy().decode())
    assert {k1.name, walk["u3"].name} <= built, "the rebuilt records lost the original names"
    assert not any(re.fullmatch(r"[0-9a-f]{64}\.jpg", name) for name in built), "hash names in the rebuild"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True, help="ID/photo.jpg folders of real photos")
    parser.add_argument("--work", type=Path, default=Path("/tmp/week"), help="scratch folder (/tmp/week)")
    parser.add_argument("--shots", type=Path, default=ROOT / "docs" / "week", help="screenshots (docs/week)")
    parser.add_argument("--unknown", type=int, default=8, help="individuals kept out of the gallery (8)")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.work.mkdir(parents=True, exist_ok=True)
    args.shots.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.work / "catalogue", ignore_errors=True)
    parts = split_photos(args.photos.resolve(), args.work, args.unknown)
    if not (args.work / "day1" / "gallery.json").exists():
        run([sys.executable, "-m", "tfwhale.gallery", "--photos", "photos", "--out", "day1"], args.work)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport=VIEW)
        server = Server(args.work, args.port)
        try:
            walk = day1(page, server.url, parts, args.shots)
        finally:
            server.stop()
        server = Server(args.work, args.port)  # the next morning
        try:
            day2(page, server.url, walk, args.shots)
            day3(page, server.url, parts, args.shots)
            day4(page, server.url, args.work, parts, walk, args.shots)
            walk["spare"] = sorted(parts["unknown"][4].iterdir())[:3]
            day5(page, server.url, args.work, walk, args.shots)
        finally:
            server.stop()
            browser.close()
    for what, values in timings.items():
        print(f"{what}: " + ", ".join(f"{v:.2f}" for v in values))
    print("the week is walked: every step showed what it should")
    return 0


if __name__ == "__main__":
    sys.exit(main())
