"""``sciqa pack``: ``bundle`` (the command), ``members`` (model files), ``wheels``
(offline wheels for the target Python), ``script`` (the bundle's ``predict.sh``)."""
