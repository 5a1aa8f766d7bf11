"""The dataset names a run takes, as the command line lists them: no torch here, so the parser's help
and the commands that load nothing (``list``, ``gc``) never import it (``compute.datasets.sources``
loads them)."""

DATASETS = ("mnist-5k", "mnist", "fashion-mnist", "cifar10", "idx:<dir>", "folder:<dir>", "crossed-sevens:<digits>",
            "corner-mark:<digits>", "thick-strokes:<digits>")  # the last three: compute.datasets.planted
