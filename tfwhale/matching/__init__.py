"""Local-feature matching beside the embedding: SIFT features, verified pairs, LNBNN, calibrated fusion.

Layer 3 (like retrieval): numpy and OpenCV only, no TensorFlow. Takes already-cropped RGB arrays and
already-computed global scores, so that every query path (predict, identify, serve) can use it.
"""
