__version__ = "0.1.0"

from negkit.taskvec import TaskVector  # noqa: E402  (after __version__, which taskvec imports)

__all__ = ["TaskVector", "__version__"]
