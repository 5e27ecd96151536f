"""Everything a saved model is made of: backbones, pooling, ArcFace heads, losses."""
