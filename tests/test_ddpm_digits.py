"""The shipped DDPM trained on scikit-learn's digits makes the digits it is asked for.

A classifier fitted on the real 8x8 digits judges samples (16x16, area-downsampled to 8x8):
at least 80% must be recognised as the requested class. The classifier itself is first checked
on real digits through the same 8 -> 16 -> 8 path, so a failure means bad samples.
"""
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "ddpm_digits16"


def _to_features(images_u8):
    import cv2

    small = np.stack([cv2.resize(im[..., 0] if im.ndim == 3 else im, (8, 8), interpolation=cv2.INTER_AREA)
                      for im in images_u8])
    return small.reshape(len(small), -1).astype(np.float64) * (16.0 / 255.0)


@pytest.fixture(scope="module")
def digit_classifier():
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    from mind_diffusion.train.data import read_digits

    d = load_digits()
    clf = SVC(gamma=0.001, C=10.0).fit(d.data, d.target)
    images, labels, _ = read_digits(16)
    acc = (clf.predict(_to_features(images)) == labels).mean()
    assert acc > 0.97, f"classifier too weak on real digits through the 16x16 path: {acc:.3f}"
    return clf


@pytest.fixture(scope="module")
def pipe():
    import mindspore as ms

    from mind_diffusion.ddpm.pipeline import DDPMPipeline

    if not (MODEL / "model_ema.ckpt").is_file():
        pytest.fail(f"the shipped model is missing: {MODEL}/model_ema.ckpt")
    ms.set_context(mode=ms.GRAPH_MODE)
    return DDPMPipeline.from_pretrained(MODEL)


def _accuracy(pipe, clf, sampler, steps, per_class, seed):
    labels = np.repeat(np.arange(10), per_class)
    images = pipe(labels, num_inference_steps=steps, sampler=sampler, seed=seed, batch_size=len(labels),
                  progress=False).images
    assert images.shape == (len(labels), 16, 16, 1) and images.dtype == np.uint8
    pred = clf.predict(_to_features(images))
    per = {c: float((pred[labels == c] == c).mean()) for c in range(10)}
    return float((pred == labels).mean()), per


def test_digits_ddim50_recognised(pipe, digit_classifier):
    acc, per = _accuracy(pipe, digit_classifier, "ddim", 50, per_class=10, seed=0)
    print(f"DDIM-50 accuracy {acc:.3f}, per class {per}")
    assert acc >= 0.80, per


def test_digits_sampling_is_reproducible(pipe):
    a = pipe([3, 7], num_inference_steps=10, sampler="ddim", seed=5, progress=False).images
    b = pipe([3, 7], num_inference_steps=10, sampler="ddim", seed=5, progress=False).images
    c = pipe([3, 7], num_inference_steps=10, sampler="ddim", seed=6, progress=False).images
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.slow
def test_digits_ancestral1000_recognised(pipe, digit_classifier):
    """The model's default sampler: 1000-step ancestral (Ho's fixed-large variance)."""
    acc, per = _accuracy(pipe, digit_classifier, "ddpm", 1000, per_class=10, seed=1)
    print(f"DDPM-1000 accuracy {acc:.3f}, per class {per}")
    assert acc >= 0.80, per
