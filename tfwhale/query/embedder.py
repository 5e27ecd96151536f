"""Query path: a fold model with the gallery's test-time augmentation, for records and for photos alike."""

from __future__ import annotations

from typing import Any

import numpy as np

from tfwhale.retrieval.postprocess import l2_normalise


class TTAModel:
    """A fold's embedding model with flip TTA (or none): each batch is embedded together with its mirror
    image in one call and the two embeddings summed. predict() stands in for the Keras model in
    feed.data.embed (predict's record pass); embed() answers photos (identify, the catalogue app)."""

    def __init__(self, model: Any, flip: bool, batch: int) -> None:
        self.model, self.flip, self.batch = model, flip, batch

    def predict(self, images, verbose: int = 0) -> np.ndarray:
        """Raw embeddings of a dataset of full image batches (data.eval_dataset pads the last one)."""
        if not self.flip:
            return np.asarray(self.model.predict(images, verbose=verbose))
        import tensorflow as tf

        both = images.map(lambda b: tf.concat([b, tf.image.flip_left_right(b)], axis=0))
        output = np.asarray(self.model.predict(both, verbose=verbose))
        return _sum_halves(output.reshape(-1, 2 * self.batch, output.shape[-1]))

    def embed(self, images: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings [n, D] of uint8 images [n, S, S, 3], batch by batch."""
        parts = []
        for start in range(0, len(images), self.batch):
            x = images[start : start + self.batch]
            if self.flip:
                x = np.concatenate([x, x[:, :, ::-1]])
            # predict_on_batch reuses the compiled predict step: Model.predict sets up ~200 ms per call
            # and an eager model(x) runs op by op (measured in benchmarks/serve_latency.py)
            output = np.asarray(self.model.predict_on_batch(x))
            parts.append(_sum_halves(output[None]) if self.flip else output)
        return l2_normalise(np.concatenate(parts))


def _sum_halves(batches: np.ndarray) -> np.ndarray:
    """[n_batches, 2 * b, D] with each batch's mirror images in its second half -> [n_batches * b, D]."""
    half = batches.shape[1] // 2
    return (batches[:, :half] + batches[:, half:]).reshape(-1, batches.shape[-1])
