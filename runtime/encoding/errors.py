"""The single exception type of the encoding package."""


class EncodingError(ValueError):
    """A message list that cannot be rendered, or completion text that cannot be parsed strictly."""
