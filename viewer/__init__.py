"""Interactive browser viewer (viser) and offline renders."""
