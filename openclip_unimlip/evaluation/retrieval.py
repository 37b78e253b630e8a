"""Image-text retrieval: Recall@K and ranks both ways, the protocol of Uni-Mlip (sec. 4.2).

One caption per image; image i and caption i form the only positive pair. Similarity is the
inner product of the (L2-normalised) embeddings. The rank of a query's positive is the number
of candidates scoring at least as high as it, the positive included: ties count against the
model, so collapsed, constant embeddings rank every positive last (R@K = 0), never first.
Without ties this equals the ranks of OpenCLIP's `evaluate()` (`open_clip_train.train.
get_clip_metrics`), and R@K equals clip_benchmark's CLIP-style recall ("at least one positive
in the top K"), which with one caption per image is the same quantity. R@K is a fraction in
[0, 1], as in both of those.
"""
import logging
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from openclip_unimlip.data.stored import ImageTextPair, load_pairs, sample_pairs
from openclip_unimlip.evaluation.features import encode_images, encode_texts

RECALL_KS = (1, 5, 10)
DIRECTIONS = ("image_to_text", "text_to_image")

ArrayLike = Union[torch.Tensor, np.ndarray]


def _similarity(image_features: ArrayLike, text_features: ArrayLike) -> torch.Tensor:
    image_features = torch.as_tensor(image_features, dtype=torch.float32)
    text_features = torch.as_tensor(text_features, dtype=torch.float32)
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            f"expected paired [N, D] features, got {tuple(image_features.shape)} and {tuple(text_features.shape)}")
    if len(image_features) == 0:
        raise ValueError("no pairs to evaluate")
    return image_features @ text_features.T


def _ranks_of_positives(scores: torch.Tensor, positives: torch.Tensor, chunk_size: int) -> torch.Tensor:
    # Row chunks keep the comparison mask at chunk_size x N instead of another N x N.
    ranks = [
        (scores[start:start + chunk_size] >= positives[start:start + chunk_size, None]).sum(dim=1)
        for start in range(0, len(scores), chunk_size)
    ]
    return torch.cat(ranks)


def positive_ranks(
        image_features: ArrayLike,
        text_features: ArrayLike,
        chunk_size: int = 1024,
) -> Dict[str, torch.Tensor]:
    """1-based rank of each query's positive, per direction (`image_to_text`, `text_to_image`).

    Ties count against the model (see the module docstring). Only the N x N similarity
    matrix is held; it is computed once and read transposed for text-to-image, so both
    directions see bit-identical scores.
    """
    similarity = _similarity(image_features, text_features)
    positives = similarity.diagonal()
    return {
        "image_to_text": _ranks_of_positives(similarity, positives, chunk_size),
        "text_to_image": _ranks_of_positives(similarity.T, positives, chunk_size),
    }


def retrieval_metrics(
        image_features: ArrayLike,
        text_features: ArrayLike,
        recall_ks: Sequence[int] = RECALL_KS,
        chunk_size: int = 1024,
) -> Dict[str, float]:
    """R@K, mean rank and median rank for image-to-text and text-to-image retrieval.

    `image_features[i]` and `text_features[i]` are a pair. Keys follow OpenCLIP's `evaluate()`:
    `image_to_text_R@1`, ..., `text_to_image_mean_rank`, `text_to_image_median_rank`.
    The median rank is floored, as OpenCLIP's.
    """
    metrics = {}
    for direction, ranks in positive_ranks(image_features, text_features, chunk_size).items():
        ranks = ranks.numpy()
        for k in recall_ks:
            metrics[f"{direction}_R@{k}"] = float(np.mean(ranks <= k))
        metrics[f"{direction}_mean_rank"] = float(ranks.mean())
        metrics[f"{direction}_median_rank"] = float(np.floor(np.median(ranks)))
    return metrics


def retrieve_top_k(
        query_features: ArrayLike,
        candidate_features: ArrayLike,
        k: int,
        chunk_size: int = 1024,
) -> torch.Tensor:
    """`[num_queries, k]` indices of each query's best candidates, best first.

    For image-to-text pass image features as queries and text features as candidates, and
    the reverse for text-to-image. Tied candidates come in index order (stable sort).
    """
    query_features = torch.as_tensor(query_features, dtype=torch.float32)
    candidate_features = torch.as_tensor(candidate_features, dtype=torch.float32)
    k = min(k, len(candidate_features))
    top = []
    for start in range(0, len(query_features), chunk_size):
        scores = query_features[start:start + chunk_size] @ candidate_features.T
        top.append(torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k])
    return torch.cat(top)


def encode_pairs(
        model: torch.nn.Module,
        preprocess: Callable,
        tokenizer: Callable,
        pairs: Sequence[ImageTextPair],
        batch_size: int = 64,
        device: Union[str, torch.device] = "cpu",
        num_workers: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalised `(image_features, text_features)`, row i of each from `pairs[i]`."""
    image_features = encode_images(
        model, preprocess, [p.image for p in pairs], batch_size=batch_size, device=device, num_workers=num_workers)
    text_features = encode_texts(model, tokenizer, [p.caption for p in pairs], batch_size=batch_size, device=device)
    return image_features, text_features


def evaluate_retrieval(
        model_name: str,
        pretrained: Optional[str] = None,
        *,
        data: str,
        num_samples: Optional[int] = 2000,
        seed: int = 0,
        batch_size: int = 64,
        device: Union[str, torch.device] = "cpu",
        num_workers: int = 0,
) -> dict:
    """Retrieval metrics of an OpenCLIP model on `num_samples` pairs of `data` drawn with `seed`.

    The model comes from `open_clip.create_model_and_transforms(model_name, pretrained=pretrained)`,
    its eval transform and `open_clip.get_tokenizer(model_name)`. `pretrained` may be an
    `open_clip_train` checkpoint (`{"epoch", "state_dict", "optimizer", ...}`, keys with or without
    DDP's `module.` prefix): OpenCLIP's `load_checkpoint` unwraps both itself. `None` keeps the
    model's initial weights. See `load_pairs` for `data` and `sample_indices` for the sampling.

    Returns a JSON-serialisable dict: the inputs, `num_available` and `num_pairs`, `metrics`
    (see `retrieval_metrics`) and the `keys` of the evaluated pairs.
    """
    import open_clip  # here, not at module level: importing it takes seconds and the metrics need none of it

    pairs = load_pairs(data)
    if not pairs:
        raise ValueError(f"no image-caption pairs found in {data!r}")
    sampled = sample_pairs(pairs, num_samples, seed)
    logging.info(f"evaluating retrieval on {len(sampled)} of {len(pairs)} pairs from {data}")

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    tokenizer = open_clip.get_tokenizer(model_name)
    image_features, text_features = encode_pairs(
        model, preprocess, tokenizer, sampled, batch_size=batch_size, device=device, num_workers=num_workers)
    return {
        "model": model_name,
        "pretrained": pretrained,
        "data": str(data),
        "num_samples": num_samples,
        "seed": seed,
        "num_available": len(pairs),
        "num_pairs": len(sampled),
        "metrics": retrieval_metrics(image_features, text_features),
        "keys": [p.key for p in sampled],
    }


def format_retrieval_table(metrics: Dict[str, float], recall_ks: Sequence[int] = RECALL_KS) -> str:
    """A plain-text table of `retrieval_metrics` output, recalls in percent."""
    header = f"{'direction':<15}" + "".join(f"{f'R@{k} (%)':>11}" for k in recall_ks)
    header += f"{'mean rank':>11}{'median rank':>13}"
    lines = [header, "-" * len(header)]
    for direction in DIRECTIONS:
        row = f"{direction.replace('_', '-'):<15}"
        row += "".join(f"{100 * metrics[f'{direction}_R@{k}']:>11.2f}" for k in recall_ks)
        row += f"{metrics[f'{direction}_mean_rank']:>11.1f}{metrics[f'{direction}_median_rank']:>13.0f}"
        lines.append(row)
    return "\n".join(lines)
