"""torchvision ``ops.roi_align`` (forward, and its backward w.r.t. the input) on the cases of an
npz: ``python _torchvision_roi_align.py IN.npz OUT.npz``.

``IN.npz`` holds ``features`` [B, H, W, C] float32 (NHWC), ``boxes`` [B, K, 4] float32 (image
pixels, ``[ymin, xmin, ymax, xmax]``) and, per case ``c``, ``config_c`` = (oh, ow, spatial_scale,
sampling_ratio, aligned) and ``cot_c`` [B, K, oh, ow, C], a cotangent. ``OUT.npz`` holds, per
case, ``out_c`` [B, K, oh, ow, C] and ``grad_c`` [B, H, W, C] (the gradient of
``sum(out * cot)`` w.r.t. the features). Runs in its own interpreter (torchvision pulls in
triton, which crashes next to TensorFlow)."""
import sys

import numpy as np
import torch
from torchvision.ops import roi_align


def main(src: str, dst: str) -> None:
    data = np.load(src)
    feats = np.ascontiguousarray(data["features"].transpose(0, 3, 1, 2))     # NCHW
    boxes = data["boxes"]
    b, k = boxes.shape[:2]
    # torchvision's rois: [batch_index, x1, y1, x2, y2]
    rois = np.concatenate([np.repeat(np.arange(b, dtype=np.float32), k)[:, None],
                           boxes.reshape(-1, 4)[:, [1, 0, 3, 2]]], axis=1)
    rois = torch.from_numpy(rois.astype(np.float32))
    out = {}
    for c in sorted(n[len("config_"):] for n in data.files if n.startswith("config_")):
        oh, ow, scale, sr, aligned = data[f"config_{c}"].tolist()
        x = torch.from_numpy(feats).requires_grad_(True)
        y = roi_align(x, rois, (int(oh), int(ow)), spatial_scale=float(scale),
                      sampling_ratio=int(sr), aligned=bool(aligned))           # [B*K, C, oh, ow]
        cot = torch.from_numpy(np.ascontiguousarray(
            data[f"cot_{c}"].reshape(b * k, int(oh), int(ow), -1).transpose(0, 3, 1, 2)))
        (y * cot).sum().backward()
        out[f"out_{c}"] = y.detach().numpy().transpose(0, 2, 3, 1).reshape(
            b, k, int(oh), int(ow), -1)
        out[f"grad_{c}"] = x.grad.numpy().transpose(0, 2, 3, 1)
    np.savez(dst, **out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
