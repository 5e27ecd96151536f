"""tf.data input for training and embedding passes: records -> decoded, augmented, batched examples."""
