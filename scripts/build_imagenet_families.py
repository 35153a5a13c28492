"""Build ``igcli/data/imagenet_families.csv``: each ImageNet-1k class and its WordNet hypernym path.

The "objects" branch maps a classifier's top-5 ImageNet classes to a coarser WordNet "family"
(``igcli.vision.families.family_of``). Scoring must never need WordNet, so this script runs once, offline,
and the CSV it writes ships inside the package. Rerun it only if the class list or the path rule
changes; commit the regenerated CSV with the change.

Inputs
    * The 1,000 class wnids and labels, in classifier index order, from timm
      (``timm.data.ImageNetInfo("imagenet-1k")``, backed by ``timm/data/_info/imagenet_synsets.txt``
      and ``imagenet_synset_to_lemma.txt``).
    * WordNet 3.0 through nltk's own reader. There is no internet for ``nltk.download``, so take the
      Debian packages and lay them out the way nltk expects::

          apt-get update && apt-get install -y wordnet-base wordnet-sense-index   # -> /usr/share/wordnet
          export NLTK_DATA=/tmp/nltk_data
          .venv/bin/python scripts/build_imagenet_families.py --prepare-wordnet

      ``--prepare-wordnet`` copies the database files from ``/usr/share/wordnet`` into
      ``$NLTK_DATA/corpora/wordnet/`` and writes the ``lexnames`` file nltk needs but Debian does not
      ship (the 45 standard lexicographer files, ``00 adj.all 3`` ... ``44 adj.ppl 3``, see
      ``man 5 lexnames``). Check that nltk reads it::

          NLTK_DATA=/tmp/nltk_data .venv/bin/python -c \
              "from nltk.corpus import wordnet as wn; print(wn.synset('dog.n.01'))"

Path rule
    A synset can have several hypernym paths to ``entity.n.01`` (golden retriever reaches ``dog.n.01``
    through ``domestic_animal.n.01`` and through ``mammal.n.01``). We keep the SHORTEST path. On a tie
    we keep the path whose synset names, compared top down, sort first. "First in nltk's order" is not
    a usable tie-break: nltk keeps a synset's hypernym pointers in a ``set``, so the order of
    ``hypernym_paths()`` changes with ``PYTHONHASHSEED`` (elephants, prayer rug, printer, wooden spoon
    flip between runs). Depth is counted with ``entity.n.01`` = 0.

Checks (printed, never written into the repo)
    With ``--dev-data DIR`` (default ``$IGCLI_DEV_DATA``), the script also checks every edge of every
    stored path against ImageNet's own ``wordnet.is_a.txt`` (parent child wnid pairs), checks that each
    wnid in ``imagenet_top5.csv`` is one of the 1,000 classes, and counts the distinct families the
    dev top-5 wnids map to around the default depth.

Run from the repository root::

    NLTK_DATA=/tmp/nltk_data .venv/bin/python scripts/build_imagenet_families.py \\
        --dev-data /work/shared/data/instagram-dev
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_CSV = REPO_ROOT / "igcli" / "data" / "imagenet_families.csv"
COLUMNS = ("class_index", "wnid", "label", "path")
PATH_SEP = ">"
ROOT_SYNSET = "entity.n.01"

DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = (
    "adj.exc", "adv.exc", "cntlist", "cntlist.rev", "data.adj", "data.adv", "data.noun", "data.verb",
    "frames.vrb", "index.adj", "index.adv", "index.noun", "index.sense", "index.verb", "noun.exc",
    "sentidx.vrb", "sents.vrb", "verb.exc",
)
# WordNet 3.0 lexicographer files, as listed in lexnames(5WN); the number is the syntactic category
# (1 noun, 2 verb, 3 adjective, 4 adverb). Debian's wordnet packages do not ship this file.
LEXNAMES = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1),
    ("noun.animal", 1), ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1),
    ("noun.cognition", 1), ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1),
    ("noun.food", 1), ("noun.group", 1), ("noun.location", 1), ("noun.motive", 1), ("noun.object", 1),
    ("noun.person", 1), ("noun.phenomenon", 1), ("noun.plant", 1), ("noun.possession", 1),
    ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1), ("noun.shape", 1),
    ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1), ("verb.body", 2), ("verb.change", 2),
    ("verb.cognition", 2), ("verb.communication", 2), ("verb.competition", 2), ("verb.consumption", 2),
    ("verb.contact", 2), ("verb.creation", 2), ("verb.emotion", 2), ("verb.motion", 2),
    ("verb.perception", 2), ("verb.possession", 2), ("verb.social", 2), ("verb.stative", 2),
    ("verb.weather", 2), ("adj.ppl", 3),
)


def prepare_wordnet(nltk_data: Path, source: Path = DEBIAN_WORDNET_DIR) -> Path:
    """Lay out Debian's WordNet 3.0 files as an nltk ``wordnet`` corpus under ``nltk_data``."""
    missing = [name for name in WORDNET_FILES if not (source / name).is_file()]
    if missing:
        sys.exit(
            f"WordNet files missing from {source}: {', '.join(missing)}. "
            "Run: apt-get update && apt-get install -y wordnet-base wordnet-sense-index"
        )
    target = nltk_data / "corpora" / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    for name in WORDNET_FILES:
        shutil.copyfile(source / name, target / name)
    lines = [f"{number:02d}\t{name}\t{category}\n" for number, (name, category) in enumerate(LEXNAMES)]
    (target / "lexnames").write_text("".join(lines), encoding="utf-8")
    return target


def imagenet_1k_classes() -> list[tuple[str, str]]:
    """(wnid, label) for the 1,000 ImageNet-1k classes, in timm's class-index order."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return [(wnid, info.label_name_to_description(wnid)) for wnid in info.label_names()]


def shortest_hypernym_path(wn, wnid: str) -> list[str]:
    """Synset names from ``entity.n.01`` down to ``wnid``: the shortest path, names sorting first on a tie."""
    synset = wn.synset_from_pos_and_offset(wnid[0], int(wnid[1:]))
    paths = [[s.name() for s in path] for path in synset.hypernym_paths()]
    return min(paths, key=lambda names: (len(names), names))


def build_rows(wn) -> list[dict[str, str]]:
    """One row per ImageNet-1k class, ready for the CSV."""
    rows = []
    for class_index, (wnid, label) in enumerate(imagenet_1k_classes()):
        path = shortest_hypernym_path(wn, wnid)
        assert path[0] == ROOT_SYNSET, (wnid, path)
        assert not any(PATH_SEP in name for name in path), (wnid, path)
        rows.append({"class_index": str(class_index), "wnid": wnid, "label": label,
                     "path": PATH_SEP.join(path)})
    return rows


def write_csv(rows: list[dict[str, str]], out: Path = OUT_CSV) -> None:
    """Write the table with ``\\n`` line endings so reruns give byte-identical files."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def check_is_a(wn, rows: list[dict[str, str]], is_a_file: Path) -> None:
    """Compare each stored path edge with ImageNet's own parent->child pairs."""
    pairs = set()
    with is_a_file.open(encoding="utf-8") as f:
        for line in f:
            parent, child = line.split()
            pairs.add((parent, child))
    children = {child for _, child in pairs}

    def wnid_of(name: str) -> str:
        synset = wn.synset(name)
        return f"{synset.pos()}{synset.offset():08d}"

    n_edges = 0
    missing: Counter[tuple[str, str]] = Counter()
    classes_without_parent = [row["wnid"] for row in rows if row["wnid"] not in children]
    for row in rows:
        path = [wnid_of(name) for name in row["path"].split(PATH_SEP)]
        assert path[-1] == row["wnid"], row
        for parent, child in zip(path, path[1:], strict=False):
            n_edges += 1
            if (parent, child) not in pairs:
                missing[(parent, child)] += 1
    print(f"is_a check: {n_edges} path edges, {sum(missing.values())} not in {is_a_file.name} "
          f"({len(missing)} distinct); classes with no parent there: {len(classes_without_parent)}")
    for (parent, child), count in missing.most_common(10):
        print(f"  missing edge {parent} -> {child} ({count}x)")


def check_dev_top5(top5_file: Path) -> None:
    """Every dev top-5 wnid must be an ImageNet-1k class; count the families they fall into.

    Goes through ``igcli.vision.families`` so the shipped CSV and its reader are what gets checked.
    """
    sys.path.insert(0, str(REPO_ROOT))
    from igcli.vision import families

    depth = families.DEFAULT_FAMILY_DEPTH
    with top5_file.open(encoding="utf-8", newline="") as f:
        wnids = Counter(row["wnid"] for row in csv.DictReader(f))
    known = {c.wnid for c in families.imagenet_classes()}
    unknown = sorted(set(wnids) - known)
    print(f"top-5 check: {sum(wnids.values())} rows, {len(wnids)} distinct wnids, "
          f"{len(unknown)} not among the 1,000 classes {unknown[:10]}")
    for d in (depth - 1, depth, depth + 1):
        table = families.family_table(d)
        fams = Counter()
        for wnid, count in wnids.items():
            fams[table.get(wnid, families.UNKNOWN)] += count
        top = ", ".join(f"{name} {count}" for name, count in fams.most_common(5))
        print(f"  depth {d}: {len(fams)} distinct families; most common: {top}")


def report_default_depth(rows: list[dict[str, str]]) -> None:
    """Show which depths put golden retriever on domestic_animal and a tableware class on tableware."""
    paths = {row["wnid"]: row["path"].split(PATH_SEP) for row in rows}
    dog = paths["n02099601"]
    dog_depths = [d for d, name in enumerate(dog) if name == "domestic_animal.n.01"]
    tableware = {wnid: p.index("tableware.n.01") for wnid, p in paths.items() if "tableware.n.01" in p}
    print(f"golden retriever -> domestic_animal.n.01 at depth {dog_depths}; "
          f"classes with tableware.n.01 on their stored path: {tableware or 'none'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare-wordnet", action="store_true",
                        help=f"copy {DEBIAN_WORDNET_DIR} into $NLTK_DATA/corpora/wordnet first")
    parser.add_argument("--dev-data", type=Path, default=os.environ.get("IGCLI_DEV_DATA"),
                        help="instagram-dev directory with wordnet.is_a.txt and imagenet_top5.csv")
    parser.add_argument("--out", type=Path, default=OUT_CSV)
    args = parser.parse_args(argv)

    nltk_data = os.environ.get("NLTK_DATA")
    if args.prepare_wordnet:
        if not nltk_data:
            sys.exit("--prepare-wordnet needs NLTK_DATA set, e.g. export NLTK_DATA=/tmp/nltk_data")
        print(f"WordNet laid out in {prepare_wordnet(Path(nltk_data))}")

    from nltk.corpus import wordnet as wn

    try:
        version = wn.get_version()
    except LookupError:
        sys.exit("nltk cannot find WordNet: install it and pass --prepare-wordnet (see this "
                 "script's docstring), with NLTK_DATA pointing at the same directory.")
    if version != "3.0":
        sys.exit(f"Expected WordNet 3.0 (ImageNet's version), nltk found {version}.")

    rows = build_rows(wn)
    assert len(rows) == 1000, len(rows)
    write_csv(rows, args.out)
    print(f"wrote {len(rows)} classes to {args.out} ({args.out.stat().st_size:,} bytes)")
    report_default_depth(rows)

    if args.dev_data:
        check_is_a(wn, rows, args.dev_data / "wordnet.is_a.txt")
        if args.out.resolve() == OUT_CSV:  # the reader only knows the shipped file
            check_dev_top5(args.dev_data / "imagenet_top5.csv")


if __name__ == "__main__":
    main()
