"""Writes a PyTorch SSD-ResNet34 laid out as the MLPerf inference reference's ``SSD_R34``
(mlcommons/inference ``vision/classification_and_detection/python/models/ssd_r34.py`` and
``base_model_r34.py``: same parameter names, shapes and forward pass up to the box decoder), with
random weights and BatchNorm statistics in eval mode: its state dict, a random input and its raw
``(locs [B, 4, N], confs [B, C, N])``. ``python _ssd_r34_ref.py SIZE NUM_CLASSES OUTDIR``.
Runs in its own interpreter (torchvision pulls in triton, which crashes next to TensorFlow)."""
import os
import sys

import numpy as np
import torch
import torchvision
from torch import nn

from _torchvision_ref import randomize_batchnorm  # this script's folder is on sys.path


class Trunk(nn.Module):
    """base_model_r34.ResNet34: torchvision resnet34's stem+layer1+layer2 as ``layer1``, its
    layer3 as ``layer2`` with the first block's conv1 and downsample at stride 1."""

    def __init__(self):
        super().__init__()
        rn34 = torchvision.models.resnet34(weights=None)
        self.layer1 = nn.Sequential(*list(rn34.children())[:6])
        self.layer2 = nn.Sequential(*list(rn34.children())[6:7])
        block = self.layer2[0][0]
        block.conv1.stride = (1, 1)
        block.downsample[0].stride = (1, 1)

    def forward(self, x):
        return [self.layer2(self.layer1(x))]


class SSDR34(nn.Module):
    """SSD_R34(strides=[3, 3, 2, 2, 2, 2]) without the Encoder: returns (locs, confs)."""

    def __init__(self, label_num=81, strides=(3, 3, 2, 2, 2, 2)):
        super().__init__()
        self.label_num = label_num
        self.model = Trunk()
        chans = [256, 512, 512, 256, 256, 256]
        mids = [256, 256, 128, 128, 128]
        pads = [1, 1, 1, 0, 0]
        s3 = list(strides[2:]) + [1]
        self.additional_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(chans[i], mids[i], kernel_size=1), nn.ReLU(inplace=True),
                          nn.Conv2d(mids[i], chans[i + 1], kernel_size=3, padding=pads[i],
                                    stride=s3[i]),
                          nn.ReLU(inplace=True))
            for i in range(5))
        nd = [4, 6, 6, 6, 4, 4]
        self.loc = nn.ModuleList(nn.Conv2d(c, k * 4, kernel_size=3, padding=1, stride=strides[0])
                                 for k, c in zip(nd, chans))
        self.conf = nn.ModuleList(nn.Conv2d(c, k * label_num, kernel_size=3, padding=1,
                                            stride=strides[1]) for k, c in zip(nd, chans))

    def forward(self, x):
        src = self.model(x)
        y = src[-1]
        for block in self.additional_blocks:
            y = block(y)
            src.append(y)
        b = x.shape[0]
        locs = torch.cat([l(s).view(b, 4, -1) for s, l in zip(src, self.loc)], 2)
        confs = torch.cat([c(s).view(b, self.label_num, -1) for s, c in zip(src, self.conf)], 2)
        return locs.contiguous(), confs.contiguous()


def main(size: int, num_classes: int, out: str) -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(SSDR34(num_classes))
    with torch.no_grad():
        torch.save(model.state_dict(), os.path.join(out, "ssd_r34.pth"))
        x = np.random.RandomState(1).randn(1, 3, size, size).astype(np.float32)
        locs, confs = model(torch.from_numpy(x))
        np.save(os.path.join(out, "input.npy"), x)
        np.save(os.path.join(out, "locs.npy"), locs.numpy())
        np.save(os.path.join(out, "confs.npy"), confs.numpy())
        sides = [int(s.shape[-1]) for s in (model.loc[i](f) for i, f in
                                            enumerate(_maps(model, torch.from_numpy(x))))]
        np.save(os.path.join(out, "sides.npy"), np.array(sides))


def _maps(model, x):
    src = model.model(x)
    for block in model.additional_blocks:
        src.append(block(src[-1]))
    return src


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
