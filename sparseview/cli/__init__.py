"""Entry points of the command lines (``recon``; ``perception`` and ``pose`` live in their
packages, which need nothing above them)."""
