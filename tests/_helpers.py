"""Small configs for fast tests."""
from mlperf_jax.configs import resnet50


def tiny_resnet_config(**overrides):
    """The tiny track shrunk further: a few hundred images, a couple of epochs."""
    c = resnet50.get_config("tiny")
    c.train_examples = 512
    c.eval_examples = 256
    c.global_batch_size = 64
    c.eval_batch_size = 128
    c.num_epochs = 2
    c.decay_epochs = 2
    c.num_runs = 1
    for k, v in overrides.items():
        c[k] = v
    return c
