"""The data layer's one error type."""
from alignlab.errors import AlignlabError


class DataError(AlignlabError, ValueError):
    """A data source, record or selection that cannot be used; the message names file, row and field."""
