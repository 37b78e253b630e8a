"""A made-up NIH ChestX-ray14 release in NIH's layout (``Data_Entry_2017*.csv``, ``images/``, the two
official list files) for the chest X-ray tests: two images per patient, Effusion images bright and
the others dark, so that the task is learnable; the last patients' images are the official test list."""
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def write_nih_release(root: Path, patients: int, test_images: int, size: int,
                      entry_file: str = "Data_Entry_2017_v2020.csv") -> None:
    """``patients`` patients, 2 images each (odd patients: Effusion, then No Finding; even ones:
    Effusion|Mass, then Mass), ``size`` pixels square; the last ``test_images`` in test_list.txt."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for patient in range(1, patients + 1):
        for follow_up, findings in enumerate(["Effusion", "No Finding"] if patient % 2 else ["Effusion|Mass", "Mass"]):
            name = f"{patient:08d}_{follow_up:03d}.png"
            level = 200 if "Effusion" in findings else 50
            pixels = np.clip(rng.normal(level, 20, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / name)
            rows.append({"Image Index": name, "Finding Labels": findings, "Patient ID": patient})
    pd.DataFrame(rows).to_csv(root / entry_file, index=False)
    names = [row["Image Index"] for row in rows]
    (root / "train_val_list.txt").write_text("\n".join(names[:-test_images]) + "\n")
    (root / "test_list.txt").write_text("\n".join(names[-test_images:]) + "\n")
