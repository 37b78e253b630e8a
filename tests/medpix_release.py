"""An empty MedPix 2.0 release folder: the files and folders the commands check before they start
(``splitted_dataset/descriptions_{train,dev,test}.jsonl`` and ``images/``), no data."""
from pathlib import Path


def empty_medpix_release(release: Path) -> Path:
    (release / "splitted_dataset").mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        (release / "splitted_dataset" / f"descriptions_{split}.jsonl").touch()
    (release / "images").mkdir()
    return release
