"""WikiText loading: the training pool, the held-out pool and their articles.

Text comes from the Hugging Face hub through `datasets` or from local text files
in WikiText's raw layout (`data.path`). Blank lines are dropped. A line such as
` = Title = ` starts a new article; deeper headings (` = = Section = = `) stay
inside their article.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from linguachain.config import DataConfig

logger = logging.getLogger(__name__)

ARTICLE_HEADING = re.compile(r"^ = [^=].* = $")


@dataclass(frozen=True)
class TextPools:
    """The training pool and the held-out pool, each a list of articles.

    An article is a list of non-blank lines, each ending with a newline.
    """

    train: list[list[str]]
    test: list[list[str]]
    source: str


def split_articles(lines: list[str]) -> list[list[str]]:
    """Group non-blank lines into articles at level-one headings."""
    articles: list[list[str]] = []
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        if ARTICLE_HEADING.match(line) or not articles:
            articles.append([])
        articles[-1].append(line + "\n")
    return articles


def _read_local(path: str, name: str) -> list[str]:
    folder = Path(path).expanduser()
    file = folder / name
    if not file.is_file():
        hint = ""
        if not folder.is_absolute():
            hint = (
                " A relative data.path resolves against the directory the SuperLink"
                " was started in; pass an absolute path."
            )
        raise FileNotFoundError(
            f"Text file not found: {file} (data.path={path!r}, file={name!r}).{hint}"
            " Set data.path to a folder holding data.train_file and data.test_file."
        )
    return file.read_text(encoding="utf-8").splitlines()


def _read_hub(config: DataConfig) -> tuple[list[str], list[str]]:
    # Imported here so that offline runs never touch the hub client.
    from datasets import load_dataset

    try:
        splits = load_dataset(config.dataset, config.subset)
    except Exception as error:  # noqa: BLE001 - datasets raises many network types
        raise RuntimeError(
            f"Could not load {config.dataset} ({config.subset}) from the Hugging Face"
            f" hub: {error}. Without hub access, set data.path to a folder of local"
            " text files (see the README's offline form)."
        ) from error
    return list(splits["train"]["text"]), list(splits["test"]["text"])


def load_text_pools(config: DataConfig) -> TextPools:
    """Load the training pool and the held-out pool as articles."""
    if config.path:
        train_lines = _read_local(config.path, config.train_file)
        test_lines = _read_local(config.path, config.test_file)
        source = (
            f"local files {Path(config.path) / config.train_file} (training pool) and "
            f"{Path(config.path) / config.test_file} (held out)"
        )
    else:
        train_lines, test_lines = _read_hub(config)
        source = f"{config.dataset} ({config.subset}) from the Hugging Face hub"
    pools = TextPools(split_articles(train_lines), split_articles(test_lines), source)
    if not pools.train:
        raise ValueError(f"The training pool has no text ({source}).")
    if len(pools.test) < 2:
        raise ValueError(
            f"The held-out pool needs at least 2 articles (public text for the"
            f" tokenizer and evaluation text), found {len(pools.test)} ({source})."
        )
    return pools


def split_held_out(
    articles: list[list[str]], public_fraction: float
) -> tuple[list[list[str]], list[list[str]]]:
    """Split held-out articles into public server text and evaluation text.

    The public slice (the first articles) trains the tokenizer; evaluation uses
    only the rest, so no evaluated text is ever seen by the tokenizer.
    """
    num_public = min(len(articles) - 1, max(1, round(public_fraction * len(articles))))
    return articles[:num_public], articles[num_public:]
