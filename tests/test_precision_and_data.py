"""Precision policy (fp16 compute, fp32 norms), the NaN/Inf image guard, and the CIFAR-10 /
image-folder readers on files built in the official formats."""
import io
import pickle
import tarfile

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from mind_diffusion.ddpm.unet import DDPMUNet
from mind_diffusion.nn.layers import apply_compute_dtype
from mind_diffusion.train.data import CIFAR10_MD5, DataError, read_cifar10, read_image_folder
from mind_diffusion.utils.images import NonFiniteImageError, to_uint8


def _tiny(seed=0):
    ms.set_seed(seed)
    net = DDPMUNet(img_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, num_groups=4,
                   num_classes=10, dropout=0.0)
    net.set_train(False)
    return net


def test_fp16_compute_policy_close_to_fp32(ms_mode):
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((2, 1, 8, 8)).astype(np.float32))
    t, y = Tensor(np.array([3.0, 500.0], np.float32)), Tensor(np.array([1, 2], np.int32))
    ref = _tiny()(x, t, y).asnumpy()
    net = apply_compute_dtype(_tiny(), ms.float16)  # the policy is applied before the first (compiled) call
    out = net(x, t, y)
    assert out.dtype == ms.float16
    assert all(p.dtype == ms.float32 for p in net.get_parameters())  # fp32 master weights
    err = np.abs(out.asnumpy().astype(np.float32) - ref).max()
    assert 0 < err < 1e-2, err  # really computed in fp16, and close


def test_nonfinite_images_are_refused():
    x = np.zeros((1, 3, 4, 4), np.float32)
    assert to_uint8(x).shape == (1, 4, 4, 3) and (to_uint8(x) == 128).all()
    x[0, 1, 2, 2] = np.nan
    with pytest.raises(NonFiniteImageError, match="NaN/Inf"):
        to_uint8(x)


def _cifar_tar(path, n=4, tamper=False):
    rng = np.random.default_rng(0)
    data = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in list(CIFAR10_MD5):
            arr = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = list(rng.integers(0, 10, n))
            raw = pickle.dumps({"data": arr, "labels": [int(v) for v in labels]}, protocol=2)
            data[name] = (arr, labels)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return data


def test_cifar10_tarball_md5_and_layout(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    data = _cifar_tar(path)
    # our synthetic members are not the official ones: the md5 check must say so
    with pytest.raises(DataError, match="md5"):
        read_cifar10(path)
    images, labels, classes = read_cifar10(path, verify_md5=False)
    assert images.shape == (20, 32, 32, 3) and classes[7] == "horse"
    arr, lab = data["data_batch_1"]
    # rows hold the R, G and B planes, each 32x32 row-major
    np.testing.assert_array_equal(images[0, :, :, 0], arr[0, :1024].reshape(32, 32))
    np.testing.assert_array_equal(images[0, :, :, 2], arr[0, 2048:].reshape(32, 32))
    np.testing.assert_array_equal(labels[:4], lab)
    test_images, _, _ = read_cifar10(path, split="test", verify_md5=False)
    assert len(test_images) == 4


def test_cifar10_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_cifar10(tmp_path / "missing.tar.gz")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="not a readable tar"):
        read_cifar10(junk)
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        for name in CIFAR10_MD5:
            raw = pickle.dumps(print)  # a pickled callable must never be loaded
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        read_cifar10(evil, verify_md5=False)


def test_image_folder_reader(tmp_path):
    from PIL import Image

    for i, cls in enumerate(("cat", "ant")):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (8, 8), (i * 100, 0, 0)).save(tmp_path / cls / "a.png")
    (tmp_path / "cat" / "broken.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="cannot read image"):
        read_image_folder(tmp_path, 8)
    (tmp_path / "cat" / "broken.png").unlink()
    images, labels, classes = read_image_folder(tmp_path, 8)
    assert classes == ["ant", "cat"] and list(labels) == [0, 1] and images.shape == (2, 8, 8, 3)
    assert images[1, 0, 0, 0] == 0 and images[0, 0, 0, 0] == 100
    resized, _, _ = read_image_folder(tmp_path, 4, resize=True)
    assert resized.shape == (2, 4, 4, 3)
    with pytest.raises(DataError, match="no class sub-folders"):
        read_image_folder(tmp_path / "cat", 8)
