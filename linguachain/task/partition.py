"""Partition the training pool across nodes with flwr-datasets partitioners.

The unit of partitioning is a paragraph (one non-blank line) tagged with its
article and a topic. IID shuffles paragraphs with the seed and deals contiguous
shards. Non-IID draws each node's share of every topic from a Dirichlet(alpha)
distribution, so a small alpha gives each node few topics.
"""

from __future__ import annotations

import collections
import logging
import re

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

from linguachain.config import DataConfig

logger = logging.getLogger(__name__)

WORD = re.compile(r"[a-z]{3,}")
VOCABULARY_SIZE = 2000
KMEANS_ITERATIONS = 20


def assign_topics(articles: list[list[str]], num_topics: int, seed: int) -> list[int]:
    """Cluster articles into topics with spherical k-means over word counts.

    WikiText has no topic labels, so topics are clusters of articles whose
    normalised bag-of-words vectors point the same way.
    """
    num_topics = min(num_topics, len(articles))
    counts = [collections.Counter(WORD.findall(" ".join(a).lower())) for a in articles]
    totals: collections.Counter[str] = collections.Counter()
    for article_counts in counts:
        totals.update(article_counts.keys())
    # Words in more than half the articles carry no topic signal.
    common = {w for w, n in totals.items() if n > len(articles) / 2}
    vocabulary = [w for w, _ in totals.most_common() if w not in common]
    index = {w: i for i, w in enumerate(vocabulary[:VOCABULARY_SIZE])}

    vectors = np.zeros((len(articles), max(1, len(index))))
    for row, article_counts in enumerate(counts):
        for word, count in article_counts.items():
            if word in index:
                vectors[row, index[word]] = np.log1p(count)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms == 0, 1.0, norms)

    rng = np.random.default_rng(seed)
    centroids = vectors[rng.choice(len(articles), size=num_topics, replace=False)]
    labels = np.zeros(len(articles), dtype=int)
    for _ in range(KMEANS_ITERATIONS):
        labels = np.argmax(vectors @ centroids.T, axis=1)
        for topic in range(num_topics):
            members = vectors[labels == topic]
            if len(members):
                centre = members.sum(axis=0)
                centroids[topic] = centre / max(np.linalg.norm(centre), 1e-12)
    return labels.tolist()


def paragraphs_dataset(articles: list[list[str]], num_topics: int, seed: int) -> Dataset:
    """Build a `datasets.Dataset` of paragraphs with `article` and `topic` columns."""
    topics = assign_topics(articles, num_topics, seed)
    rows: dict[str, list] = {"text": [], "article": [], "topic": []}
    for article_id, (article, topic) in enumerate(zip(articles, topics)):
        for line in article:
            rows["text"].append(line)
            rows["article"].append(article_id)
            rows["topic"].append(topic)
    return Dataset.from_dict(rows)


def load_partition(
    articles: list[list[str]], config: DataConfig, partition_id: int, num_partitions: int
) -> Dataset:
    """Return the paragraphs of one node's partition, reproducible from the seed."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"Invalid partition-id {partition_id} for num-partitions {num_partitions};"
            " use 0 <= partition-id < num-partitions in the node config."
        )
    dataset = paragraphs_dataset(articles, config.num_topics, config.seed)
    if config.partitioner == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
        partitioner.dataset = dataset.shuffle(seed=config.seed)
    else:
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="topic",
            alpha=config.alpha,
            min_partition_size=1,
            seed=config.seed,
        )
        partitioner.dataset = dataset
    partition = partitioner.load_partition(partition_id)
    logger.info(
        "Partition %d of %d (%s): %d paragraphs from %d articles, %d topics",
        partition_id,
        num_partitions,
        config.partitioner,
        len(partition),
        len(set(partition["article"])),
        len(set(partition["topic"])),
    )
    return partition
