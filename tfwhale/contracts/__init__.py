"""The hand-offs between stages, owned here, imported by both sides."""
