"""The corral command line (click)."""
