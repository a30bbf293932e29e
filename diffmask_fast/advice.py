"""The warning category of the package, so that its advice can be told from other warnings."""


class DiffmaskWarning(UserWarning):
    """Advice from diffmask_fast about the data or the settings (broken text, skipped files, anchors
    that match no word...). The command line prints it as one line; filter it by this category."""
