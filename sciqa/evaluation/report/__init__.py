"""``sciqa report``: ``data`` (what the page shows), ``plots`` (matplotlib PNGs), ``html``."""
