"""tfwhale: photo-identification of individual whales and dolphins (build -> train -> predict)."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) drowns the tools' own output; users can
# still ask for it with TF_CPP_MIN_LOG_LEVEL=0.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
