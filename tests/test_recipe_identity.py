"""Every shipped recipe keeps its content hash unless a change means to alter it.

Results are found by content hash (results.find_result), so a refactor that changes a
hash silently orphans every finished run of that recipe. tests/recipe_hashes.json was
written from main before the structural moves of issue 24; a change that alters a hash on
purpose rewrites the file (`python tests/test_recipe_identity.py > tests/recipe_hashes.json`)
and says why in its commit message.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PINNED = Path(__file__).with_name("recipe_hashes.json")


def current_hashes() -> dict:
    """{recipe file: hash} and {"table NAME: ROW LABEL": hash of the row's first seed}."""
    from gluon_tricks.identity import content_hash
    from gluon_tricks.recipe import load_recipe
    from gluon_tricks.tables import load_table, row_recipes, table_names

    files = [p for p in (REPO / "recipes").rglob("*.toml") if p.name != "table.toml"]
    files += sorted((REPO / "teacher").glob("*.toml"))
    hashes = {str(p.relative_to(REPO)): content_hash(load_recipe(p)) for p in sorted(files)}
    for name in table_names(REPO / "recipes"):
        for row in load_table(REPO / "recipes", name).rows:
            first = row_recipes(row, 1, 1.0)
            if first:
                hashes[f"table {name}: {row.label}"] = content_hash(first[0])
    return hashes


def test_every_shipped_recipe_and_table_row_keeps_its_pinned_hash():
    # Recipes added after the file was written are not checked until it is regenerated.
    pinned, now = json.loads(PINNED.read_text()), current_hashes()
    changed = {k: (h, now[k]) for k, h in pinned.items() if k in now and now[k] != h}
    gone = sorted(set(pinned) - set(now))
    assert not changed and not gone, (
        f"hash changed (pinned, now): {changed}; no longer shipped: {gone}. "
        f"If intended, regenerate {PINNED.name} and give the reason in the commit")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    print(json.dumps(current_hashes(), indent=1, sort_keys=True))
