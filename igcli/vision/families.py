"""ImageNet-1k class -> WordNet "family", without WordNet at run time.

The objects branch turns a classifier's top-5 ImageNet classes (WordNet ids such as ``n02099601``,
golden retriever) into coarser families by cutting each class's hypernym path at a fixed depth::

    from igcli.vision.families import family_of
    family_of("n02099601")            # 'domestic_animal.n.01'
    family_of("n02099601", depth=8)   # 'dog.n.01'

The paths come from ``igcli/data/imagenet_families.csv`` (``class_index,wnid,label,path``), built
once by ``scripts/build_imagenet_families.py`` from WordNet 3.0. Each path runs from ``entity.n.01``
(depth 0) down to the class; where WordNet offers several, the shortest one is stored, and on a tie
the one whose synset names sort first (nltk's own path order changes from run to run).

Why depth 7: it is the one depth where golden retriever (and 116 of ImageNet's 118 dog breeds) land on
``domestic_animal.n.01``; depth 6 is ``animal.n.01``, depth 8 ``dog.n.01``. The other two, Italian
greyhound and whippet, reach ``animal.n.01`` sooner through ``racer.n.03`` (a greyhound is also a racer),
so the shortest-path rule puts them in that family. ``tableware.n.01`` also
sits at depth 7 in WordNet, but no depth can put a class on it: under the shortest-path rule no
ImageNet-1k class keeps ``tableware.n.01`` on its path (soup and mixing bowls reach ``entity.n.01``
sooner through ``container.n.01``, wooden spoon through ``woodenware.n.01``; "plate" n07579787 is a
food, a main course). At depth 7 a coffee mug is ``vessel.n.03``, soup and mixing bowls are
``dish.n.01``, a wooden spoon is ``woodenware.n.01`` (``ware.n.01`` at depth 6).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources

from igcli.errors import IgcliError

DEFAULT_FAMILY_DEPTH: int = 7
UNKNOWN = "unknown"
PATH_SEP = ">"
_TABLE = "data/imagenet_families.csv"


@dataclass(frozen=True)
class ImageNetClass:
    """One ImageNet-1k class: classifier index, WordNet id, timm label, hypernym path."""

    class_index: int
    wnid: str
    label: str
    path: tuple[str, ...]  # synset names, entity.n.01 first, the class itself last


@cache
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    """All 1,000 classes in classifier index order, read once from the shipped CSV."""
    table = resources.files("igcli").joinpath(_TABLE)
    try:
        with table.open("r", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError as err:
        raise IgcliError(
            f"{_TABLE} is missing from the igcli package: reinstall igcli, or regenerate it with "
            "scripts/build_imagenet_families.py"
        ) from err
    return tuple(
        ImageNetClass(int(row["class_index"]), row["wnid"], row["label"], tuple(row["path"].split(PATH_SEP)))
        for row in rows
    )


@cache
def _by_wnid() -> dict[str, ImageNetClass]:
    return {c.wnid: c for c in imagenet_classes()}


def _cut(path: tuple[str, ...], depth: int) -> str:
    if depth < 0:
        raise ValueError(f"family depth must be 0 or more (0 is entity.n.01), got {depth}")
    return path[min(depth, len(path) - 1)]


def family_of(wnid: str, depth: int = DEFAULT_FAMILY_DEPTH) -> str:
    """Synset name at ``depth`` on the class's path (``entity.n.01`` is depth 0).

    A class whose path ends above ``depth`` is its own family; a wnid that is not one of the
    1,000 ImageNet-1k classes gives ``"unknown"``.
    """
    cls = _by_wnid().get(wnid)
    return UNKNOWN if cls is None else _cut(cls.path, depth)


@cache
def _family_table(depth: int) -> dict[str, str]:
    return {c.wnid: _cut(c.path, depth) for c in imagenet_classes()}


def family_table(depth: int = DEFAULT_FAMILY_DEPTH) -> dict[str, str]:
    """wnid -> family for all 1,000 classes at ``depth``; computed once per depth, returned as a copy."""
    return dict(_family_table(depth))


def label_of(wnid: str) -> str:
    """timm's label for the class (e.g. ``"golden retriever"``), or ``"unknown"``."""
    cls = _by_wnid().get(wnid)
    return UNKNOWN if cls is None else cls.label
