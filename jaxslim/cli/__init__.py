"""Console entry points (``jaxslim-convert``, ``jaxslim-demo``)."""
