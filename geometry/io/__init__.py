"""Readers and writers of camera formats (COLMAP, transforms.json, LLFF, IDR/DTU)."""
