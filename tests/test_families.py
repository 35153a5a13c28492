"""igcli.vision.families: the shipped ImageNet class -> WordNet family table. No WordNet needed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import missing, need_module

from igcli.vision import families
from igcli.vision.families import DEFAULT_FAMILY_DEPTH, family_of, family_table, imagenet_classes, label_of

GOLDEN_RETRIEVER = "n02099601"
CHIHUAHUA = "n02085620"
COFFEE_MUG = "n03063599"
SOUP_BOWL = "n04263257"
WOODEN_SPOON = "n04597913"


def test_golden_retriever_is_a_domestic_animal_at_default_depth():
    assert family_of(GOLDEN_RETRIEVER) == "domestic_animal.n.01"
    assert family_of(GOLDEN_RETRIEVER, DEFAULT_FAMILY_DEPTH) == "domestic_animal.n.01"


def test_dog_breeds_share_the_golden_retriever_family_but_two_greyhounds():
    """ImageNet-1k's dog breeds are classes 151-268 (chihuahua to Mexican hairless), chosen by index, not by
    the stored paths. Under the shortest-path rule two of the 118 reach animal.n.01 through racer.n.03."""
    assert family_of(CHIHUAHUA) == family_of(GOLDEN_RETRIEVER)
    dogs = {c.wnid: c.label for c in imagenet_classes() if 151 <= c.class_index <= 268}
    assert len(dogs) == 118 and dogs[CHIHUAHUA] == "Chihuahua" and dogs["n02113978"] == "Mexican hairless"
    racers = {w for w in dogs if family_of(w) == "racer.n.03"}
    assert {dogs[w] for w in racers} == {"Italian greyhound", "whippet"}
    assert {family_of(w) for w in dogs.keys() - racers} == {"domestic_animal.n.01"}


def test_depth_moves_up_and_down_the_dog_path():
    assert family_of(GOLDEN_RETRIEVER, DEFAULT_FAMILY_DEPTH - 1) == "animal.n.01"
    assert family_of(GOLDEN_RETRIEVER, DEFAULT_FAMILY_DEPTH + 1) == "dog.n.01"
    assert family_of(GOLDEN_RETRIEVER, 0) == "entity.n.01"


def test_tableware_classes_fall_into_container_and_ware_families():
    # Shortest WordNet paths skip tableware.n.01 (see the igcli.vision.families docstring).
    assert family_of(COFFEE_MUG) == "vessel.n.03"
    assert family_of(SOUP_BOWL) == "dish.n.01"
    assert family_of(COFFEE_MUG, DEFAULT_FAMILY_DEPTH - 1) == family_of(SOUP_BOWL, DEFAULT_FAMILY_DEPTH - 1)
    assert family_of(COFFEE_MUG, DEFAULT_FAMILY_DEPTH - 1) == "container.n.01"
    # Wooden spoon ties container.n.01>spoon.n.01 with ware.n.01>woodenware.n.01; names break the tie.
    assert family_of(WOODEN_SPOON) == "woodenware.n.01"
    assert family_of(WOODEN_SPOON, DEFAULT_FAMILY_DEPTH - 1) == "ware.n.01"
    assert not any("tableware.n.01" in c.path for c in imagenet_classes())


def test_all_thousand_classes_in_classifier_order_with_rooted_paths():
    classes = imagenet_classes()
    assert [c.class_index for c in classes] == list(range(1000))
    assert len({c.wnid for c in classes}) == 1000
    assert classes[0].wnid == "n01440764"  # tench, timm's class 0
    assert classes[207].wnid == GOLDEN_RETRIEVER
    for c in classes:
        assert c.path[0] == "entity.n.01", c
        assert len(set(c.path)) == len(c.path), c


def test_path_ends_at_the_class_itself():
    classes = imagenet_classes()
    by_wnid = {c.wnid: c for c in classes}
    assert by_wnid[GOLDEN_RETRIEVER].path[-1] == "golden_retriever.n.01"
    assert by_wnid[COFFEE_MUG].path[-1] == "coffee_mug.n.01"
    # Two classes are both called "crane" (bird and machine): their paths still end on distinct synsets.
    assert len({c.path[-1] for c in classes}) == 1000
    for c in classes:
        lemmas = {lemma.strip().lower().replace(" ", "_") for lemma in c.label.split(",")}
        assert c.path[-1].rsplit(".", 2)[0].lower() in lemmas, c


def test_family_table_covers_all_classes_and_matches_family_of():
    for depth in (DEFAULT_FAMILY_DEPTH - 1, DEFAULT_FAMILY_DEPTH, DEFAULT_FAMILY_DEPTH + 1):
        table = family_table(depth)
        assert len(table) == 1000
        assert all(table[c.wnid] == family_of(c.wnid, depth) for c in imagenet_classes())
    assert len(set(family_table().values())) == 236


def test_family_table_copies_cannot_poison_the_cache():
    family_table()[GOLDEN_RETRIEVER] = "tampered"
    assert family_table()[GOLDEN_RETRIEVER] == "domestic_animal.n.01"


def test_unknown_wnid_is_unknown():
    assert family_of("n99999999") == "unknown"
    assert family_of("") == "unknown"
    assert label_of("n99999999") == "unknown"


def test_depth_beyond_the_path_returns_the_class_itself():
    assert family_of(GOLDEN_RETRIEVER, 50) == "golden_retriever.n.01"
    short = min(imagenet_classes(), key=lambda c: len(c.path))
    assert family_of(short.wnid, len(short.path) - 1) == short.path[-1]
    assert family_of(short.wnid, len(short.path)) == short.path[-1]
    assert family_of(short.wnid, DEFAULT_FAMILY_DEPTH) == short.path[-1]


def test_negative_depth_is_refused():
    with pytest.raises(ValueError, match="depth"):
        family_of(GOLDEN_RETRIEVER, -1)


def test_labels_come_from_timm():
    assert label_of(GOLDEN_RETRIEVER) == "golden retriever"
    assert label_of(COFFEE_MUG) == "coffee mug"


def test_shipped_csv_lives_in_the_package():
    csv_path = Path(families.__file__).parents[1] / "data" / "imagenet_families.csv"
    header = csv_path.read_text(encoding="utf-8").splitlines()[0]
    assert header == "class_index,wnid,label,path"


def test_importing_and_using_families_never_imports_nltk():
    code = (
        "import sys\n"
        "from igcli.vision.families import family_of, family_table\n"
        "assert family_of('n02099601') == 'domestic_animal.n.01'\n"
        "family_table(3)\n"
        "bad = [m for m in ('nltk', 'timm', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_shipped_csv_matches_a_fresh_build_when_wordnet_is_available(tmp_path):
    """Where nltk can read WordNet 3.0 (see scripts/build_imagenet_families.py; .ci/run sets it up); skipped
    otherwise, and a failure under CI=true."""
    wordnet = need_module("nltk.corpus", "pip install nltk").wordnet
    try:
        wordnet.get_version()
    except LookupError:
        missing("WordNet is not installed for nltk: apt-get install wordnet-base wordnet-sense-index, then lay it "
                "out under $NLTK_DATA with prepare_wordnet of scripts/build_imagenet_families.py (as .ci/run does)")
    script = Path(__file__).resolve().parents[1] / "scripts" / "build_imagenet_families.py"
    spec = importlib.util.spec_from_file_location("build_imagenet_families", script)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    out = tmp_path / "imagenet_families.csv"
    build.write_csv(build.build_rows(wordnet), out)
    shipped = Path(families.__file__).parents[1] / "data" / "imagenet_families.csv"
    assert out.read_bytes() == shipped.read_bytes()
