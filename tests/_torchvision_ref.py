"""Writes a torchvision ResNet's state dict (random weights and BatchNorm statistics, eval mode),
a random input and torchvision's logits on it: ``python _torchvision_ref.py ARCH SIZE OUTDIR``.
Runs in its own interpreter (torchvision pulls in triton, which crashes next to TensorFlow)."""
import os
import sys

import numpy as np
import torch
import torchvision


def randomize_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Random BatchNorm affine parameters and running statistics (fresh ones are 1/0, which would
    hide a mean/var or scale/bias mix-up in a converter); the model in eval mode."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def main(arch: str, size: int, out: str) -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(getattr(torchvision.models, arch)(weights=None))
    with torch.no_grad():
        torch.save(model.state_dict(), os.path.join(out, f"{arch}.pth"))
        x = np.random.RandomState(1).randn(1, 3, size, size).astype(np.float32)
        np.save(os.path.join(out, f"{arch}_{size}_input.npy"), x)
        np.save(os.path.join(out, f"{arch}_{size}_logits.npy"), model(torch.from_numpy(x)).numpy())


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
