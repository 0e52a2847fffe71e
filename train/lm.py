"""Language-model training for pods and clusters: ``python -m train.lm [PRESET[:ARG]] [--overrides]``.

A thin script over the same library function as the ``jaxslim-train`` console script; run it on
every host of a multi-host job (``jax.distributed`` is initialised from the environment).
"""

from jaxslim.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
