"""build-tfrecords: photos + CSV (+ detector boxes) -> cropped, resized, sharded TFRecords."""
