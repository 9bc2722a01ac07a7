"""scripts/extract_cifar_class.py on a small fake CIFAR-10 tarball in the official format
(cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}, pickled dicts with uint8
``data`` N x 3072 = R, G, B planes of 32 x 32 row-major, and ``labels``)."""
import importlib.util
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import captured_error
from mind_diffusion.train.data import CIFAR10_CLASSES

ROOT = Path(__file__).resolve().parents[1]
HORSE = 7


def _script():
    spec = importlib.util.spec_from_file_location("extract_cifar_class", ROOT / "scripts" / "extract_cifar_class.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _add(tar, name, obj):
    raw = pickle.dumps(obj, protocol=2)
    info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
    info.size = len(raw)
    tar.addfile(info, io.BytesIO(raw))


def make_fake_cifar(path, per_batch=12, seed=0):
    """Returns {split: (data N x 3072 uint8, labels)} written to ``path`` as a .tar.gz."""
    rng = np.random.default_rng(seed)
    out = {"train": ([], []), "test": ([], [])}
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
            labels = [int(x) for x in rng.integers(0, 10, size=per_batch)]
            labels[0] = HORSE  # at least one horse per batch
            _add(tar, name, {"batch_label": name, "labels": labels, "data": data,
                             "filenames": [f"{name}_{k}.png" for k in range(per_batch)]})
            split = "test" if name == "test_batch" else "train"
            out[split][0].append(data)
            out[split][1].extend(labels)
        _add(tar, "batches.meta", {"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": per_batch,
                                   "num_vis": 3072})
    return {k: (np.concatenate(v[0]), np.asarray(v[1])) for k, v in out.items()}


def _err(capsys, rc, *needles):
    return captured_error(capsys, rc, *needles)


@pytest.mark.parametrize("split", ["train", "test"])
def test_extracts_exact_pixels_of_one_class(tmp_path, split, capsys):
    from PIL import Image

    tarball = tmp_path / "cifar-10-python.tar.gz"
    truth = make_fake_cifar(tarball)
    data, labels = truth[split]
    out = tmp_path / f"horse_{split}"
    rc = _script()(["--tarball", str(tarball), "--class", "horse", "--split", split, "--out", str(out),
                    "--no_verify_md5", "--no_progress"])
    assert rc == 0, capsys.readouterr().err
    files = sorted(out.glob("*.png"))
    idx = np.flatnonzero(labels == HORSE)
    assert len(files) == len(idx) >= (5 if split == "train" else 1)
    for f, i in zip(files, idx):
        img = np.asarray(Image.open(f))
        # independent decode of the official layout: channel c, row y, column x at c*1024 + y*32 + x
        want = np.stack([data[i, c * 1024:(c + 1) * 1024].reshape(32, 32) for c in range(3)], axis=-1)
        np.testing.assert_array_equal(img, want, err_msg=f.name)
    man = json.loads((out / "cifar_class.json").read_text())
    assert man == {"dataset": "CIFAR-10", "class": "horse", "class_id": 7, "split": split, "count": len(idx),
                   "md5_verified": False, "source": str(tarball)}
    # the same folder again: refused, nothing overwritten
    before = [f.stat().st_mtime_ns for f in files]
    rc = _script()(["--tarball", str(tarball), "--class", "7", "--split", split, "--out", str(out),
                    "--no_verify_md5", "--no_progress"])
    _err(capsys, rc, "already holds", "nothing was overwritten")
    assert [f.stat().st_mtime_ns for f in files] == before


def test_bad_inputs(tmp_path, capsys):
    main = _script()
    tarball = tmp_path / "cifar-10-python.tar.gz"
    make_fake_cifar(tarball, per_batch=4)
    out = str(tmp_path / "out")
    _err(capsys, main(["--tarball", str(tmp_path / "nope.tar.gz"), "--class", "horse", "--out", out]),
         "tarball not found", "nope.tar.gz")
    line = _err(capsys, main(["--tarball", str(tarball), "--class", "hourse", "--out", out]),
                "unknown CIFAR-10 class 'hourse'", "did you mean 'horse'")
    for name in CIFAR10_CLASSES:  # all ten names listed
        assert name in line
    # a fake archive is not the published one: the md5 check says so and how to skip it
    _err(capsys, main(["--tarball", str(tarball), "--class", "horse", "--out", out, "--no_progress"]),
         "md5", "--no_verify_md5")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not a tar archive")
    _err(capsys, main(["--tarball", str(junk), "--class", "horse", "--out", out]), "not a readable tar archive")
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        info = tarfile.TarInfo("readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    _err(capsys, main(["--tarball", str(other), "--class", "horse", "--out", out]), "no member data_batch_1",
         "not the CIFAR-10 python tarball")
    assert not (tmp_path / "out").exists()  # no error left a half-written folder
