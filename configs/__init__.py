"""Shipped training configs (YAML); a package only so that wheels carry them."""
