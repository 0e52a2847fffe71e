"""Console entry points (``jaxslim-convert``, ``jaxslim-demo``): thin argparse wrappers over the library."""
