"""torchvision's ``paste_masks_in_image`` (the arithmetic of maskrcnn-benchmark's ``Masker``) on
the cases of an npz: ``python _torchvision_paste.py IN.npz OUT.npz``.

``IN.npz`` holds, per case ``c``: ``masks_c`` [K, M, M] float32, ``boxes_c`` [K, 4] float32 legacy
``(x0, y0, x1, y1)`` and ``size_c`` (height, width); ``padding`` is shared. ``OUT.npz`` holds
``prob_c`` [K, H, W] float32, the pasted probabilities (``> 0.5`` is the reference's mask).
Runs in its own interpreter (torchvision pulls in triton, which crashes next to TensorFlow)."""
import sys

import numpy as np
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image


def main(src: str, dst: str) -> None:
    data = np.load(src)
    padding = int(data["padding"])
    out = {}
    cases = sorted(k[len("masks_"):] for k in data.files if k.startswith("masks_"))
    with torch.no_grad():
        for c in cases:
            masks = torch.from_numpy(data[f"masks_{c}"])[:, None]
            boxes = torch.from_numpy(data[f"boxes_{c}"])
            h, w = (int(v) for v in data[f"size_{c}"])
            pasted = paste_masks_in_image(masks, boxes, (h, w), padding=padding)
            out[f"prob_{c}"] = pasted[:, 0].numpy()
    np.savez(dst, **out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
