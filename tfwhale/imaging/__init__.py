"""The image engine: photo bytes + box -> the crop every stage sees (region decode, resize, encode)."""
