"""The README's screenshots (docs/screenshots/) are not older than what they show (issue 18).

``python -m tools.screenshots`` records in docs/screenshots/MANIFEST.json a hash of the app's
source, dynexit/viz.py and the zoo's sidecar / bench files; this test recomputes it. When it fails,
retake the screenshots (``.venv/bin/python -m tools.screenshots``) and commit them with the change.
"""

import json

from tools import screenshots

SHOTS = screenshots.browser.ROOT / "docs" / "screenshots"


def test_source_hash_follows_contents_not_names_order(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "a.py").write_text("x = 1\n")
    (tmp_path / "app" / "b.py").write_text("y = 2\n")
    before = screenshots.source_hash(tmp_path)
    assert screenshots.shown_files(tmp_path) == ["app/a.py", "app/b.py"]
    (tmp_path / "app" / "b.py").write_bytes(b"y = 2\r\n")  # a Windows checkout: same hash
    assert screenshots.source_hash(tmp_path) == before
    (tmp_path / "app" / "b.py").write_text("y = 3\n")
    assert screenshots.source_hash(tmp_path) != before


def test_screenshots_are_not_older_than_the_code_they_show():
    manifest = json.loads((SHOTS / screenshots.MANIFEST).read_text())
    for name in manifest["screenshots"]:
        assert (SHOTS / name).is_file(), f"{name} is listed in MANIFEST.json but missing"
    changed = sorted(set(screenshots.shown_files()) ^ set(manifest["files"]))
    assert manifest["source_sha256"] == screenshots.source_hash(), (
        "docs/screenshots/ are older than the code they show (app/, dynexit/viz.py or the zoo's JSON files "
        f"changed{'; files added or removed: ' + ', '.join(changed) if changed else ''}): retake them with "
        "`.venv/bin/python -m tools.screenshots` and commit them")
