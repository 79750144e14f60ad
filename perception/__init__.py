"""LiDAR-camera 3D detection on nuScenes-format data; the `perception` CLI."""
